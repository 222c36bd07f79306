"""Train a model and save it to the BentoML model store.

python train.py                      # the default: iris, a random forest
python train.py --table data.csv --target churned --key customer_id [--name churn]
                [--task classification|regression]
                (--csv is the same option; Parquet and JSON Lines are read as well)
python train.py --if-missing         # the default, only when the store lacks it
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keyed_serving.model.training import default_model_exists, train_and_save, train_default
from keyed_serving.settings import DEFAULT_MODEL_NAME
from keyed_serving.tables import read_training_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--table",
        "--csv",
        dest="table",
        help="a CSV (header row; only an empty cell is missing), Parquet or JSON Lines file",
    )
    parser.add_argument("--target", help="the column to predict (required with --table)")
    parser.add_argument("--key", help="the table's key column; never used as a feature")
    parser.add_argument(
        "--name", help=f"model name in the store (default: csv file stem, or {DEFAULT_MODEL_NAME})"
    )
    parser.add_argument(
        "--task",
        choices=["classification", "regression"],
        help="inferred from the target if omitted",
    )
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="train the default model only if the store lacks it",
    )
    args = parser.parse_args(argv)

    if args.table is None:
        if args.target or args.key or args.task:
            parser.error("--target, --key and --task go with --table")
        name = args.name or DEFAULT_MODEL_NAME
        if args.if_missing and default_model_exists(name):
            print(f"model {name}:latest is in the store; not training")
            return 0
        trained = train_default(name)
    else:
        if not args.target:
            parser.error("--table needs --target")
        name = args.name or Path(args.table).stem.replace(" ", "_").lower()
        try:
            # The one table reader, as keyed-score and /predict_file read what is scored:
            # a CSV's "NA" is a category here exactly as it is there.
            keys = [args.key] if args.key else []
            table = read_training_table(args.table, keys, args.target)
            trained = train_and_save(
                table,
                target=args.target,
                key=args.key,
                name=name,
                task=args.task,
                source=args.table,
            )
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(f"saved {trained.tag} ({trained.task}); holdout {trained.metric}: {trained.score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
