"""The edge: real SuperNodes on boards. ``fedconv deploy`` (a SuperLink and SuperNodes with TLS
and node authentication), the board's ClientApp and its warm worker, the lab's certificates
(``fedconv certs``), one data folder per board (``fedconv device-data``), and a trained model's
export for inference on a board (``fedconv export``).

May import: everything below it, :mod:`fedconv.simulation` included (a deployment writes the
same Flower App description a simulation runs).
"""
