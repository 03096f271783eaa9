"""The wire: what travels between server and clients and what it costs. Codecs both ways
(:mod:`~fedconv.wire.compression`), what a valid train reply is (:mod:`~fedconv.wire.reply_checks`,
from each algorithm's ``Wire``), and the byte ledger (:mod:`~fedconv.wire.ledger`).

May import: the core modules, :mod:`fedconv.data`, :mod:`fedconv.learning`, :mod:`fedconv.algorithms`.
"""
