"""Time fedconv's ClientApp on one train message (one local epoch), in this process.

Run with the same arguments natively and inside the emulated board: the ratio of the two
is a rough board-speed factor. The message is built as the server builds it (the initial
global model, round 1) and handed to the ClientApp as Flower hands it; the first call pays
the imports and data loading, the next ``--repeat`` calls are the epoch itself.

    python one_message.py RUN_CONFIG.json DATA_DIR [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

T0 = time.perf_counter()

from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict  # noqa: E402
from flwr.app.message import make_message  # noqa: E402
from flwr.app.metadata import Metadata  # noqa: E402

from fedconv.config import from_run_config  # noqa: E402
from fedconv.data.datasets import declared_shape  # noqa: E402
from fedconv.data.device_data import load_device_data  # noqa: E402
from fedconv.federation import client_app  # noqa: E402
from fedconv.learning import task  # noqa: E402
from fedconv.learning.models import transmitted_state  # noqa: E402

IMPORTED = time.perf_counter() - T0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_config", help="the flat run config as JSON (fedconv.config.to_run_config)")
    parser.add_argument("data_dir", help="a device data folder (python -m fedconv.edge.board_data)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    run_config = json.loads(open(args.run_config).read())
    cfg = from_run_config(run_config)
    d = cfg["dataset"]
    own = load_device_data(args.data_dir, declared_shape(d), int(d["num_classes"]),
                           float(cfg["partition"]["test_fraction"]), int(cfg["seed"]), 2)
    model = task.initial_model(cfg, own.ds)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2, "data-dir": args.data_dir},
                      state=RecordDict(), run_config=run_config)

    def one() -> tuple[float, int]:
        content = RecordDict({"arrays": ArrayRecord(transmitted_state(model)),
                              "config": ConfigRecord({"server-round": 1, "lr": 0.05})})
        meta = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600, message_type="train")
        t = time.perf_counter()
        reply = client_app.app(message=make_message(metadata=meta, content=content), context=context)
        return time.perf_counter() - t, int(reply.content.metric_records["metrics"]["num-examples"])

    first, examples = one()
    epochs = [one()[0] for _ in range(args.repeat)]
    print(json.dumps({"import_seconds": round(IMPORTED, 3), "first_message_seconds": round(first, 3),
                      "epoch_seconds": round(statistics.median(epochs), 3), "epochs": [round(e, 3) for e in epochs],
                      "examples": examples}))


if __name__ == "__main__":
    main()
