"""The wire: what travels between server and clients and what it costs. One channel per
direction that both apps use (:mod:`~fedconv.wire.channel`), the codecs as a table
(:mod:`~fedconv.wire.compression`: a new codec is one entry), what a valid train reply is
(:mod:`~fedconv.wire.reply_checks`, from each algorithm's ``Wire``), and the byte ledger
(:mod:`~fedconv.wire.ledger`).

May import: the core modules, :mod:`fedconv.data`, :mod:`fedconv.learning`, :mod:`fedconv.algorithms`.
"""
