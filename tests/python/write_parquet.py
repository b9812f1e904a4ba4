"""Write a Parquet file from a JSON lines file with pyarrow (what HF datasets' parquet files look like).

usage: write_parquet.py INPUT.jsonl OUTPUT.parquet [--row-group-size N] [--compression snappy|zstd|none]
Rows keep every JSON field as a column; a JSON null stays a null.
"""
import argparse
import json

import pyarrow as pa
import pyarrow.parquet as pq

parser = argparse.ArgumentParser()
parser.add_argument("input")
parser.add_argument("output")
parser.add_argument("--row-group-size", type=int, default=64)
parser.add_argument("--compression", default="snappy")
args = parser.parse_args()

rows = [json.loads(line) for line in open(args.input, encoding="utf-8") if line.strip()]
table = pa.Table.from_pylist(rows)
pq.write_table(table, args.output, row_group_size=args.row_group_size, compression=args.compression)
print(json.dumps({"rows": len(rows), "columns": table.column_names}))
