"""W_linear for DBOS Transact: the mirror of `squid-mesh-bench durable`'s closed loop.

A 3-step linear workflow whose steps echo their input, run by N callers in a closed loop:
each caller starts a workflow and waits for its result, then starts the next, RUNS in all,
starts inside the timed window. Prints one JSON line with steps/s.

    python linear.py --db postgres --callers 8 --runs 2000
    python linear.py --db sqlite --callers 8 --runs 2000
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from urllib.parse import urlsplit, urlunsplit

import psycopg
from dbos import DBOS


@DBOS.step()
def one(n: dict) -> dict:
    return n


@DBOS.step()
def two(n: dict) -> dict:
    return n


@DBOS.step()
def three(n: dict) -> dict:
    return n


@DBOS.workflow()
def linear(n: int) -> dict:
    return three(two(one({"n": n})))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--callers", type=int, default=8)
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument(
        "--pg-url",
        default=os.environ.get("SQUID_MESH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
    )
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="dbos-bench-")
    dbname = f"dbos_bench_{os.getpid()}"
    if args.db == "postgres":
        # The same server and options, another database (DBOS creates it on launch).
        url = urlunsplit(urlsplit(args.pg_url)._replace(path=f"/{dbname}"))
    else:
        url = f"sqlite:///{tmp}/dbos.sqlite"
    DBOS(config={"name": "dbos-bench", "system_database_url": url, "run_admin_server": False})
    DBOS.launch()
    try:
        for i in range(50):  # warm-up, outside the timed window
            linear(-1 - i)
        per = args.runs // args.callers

        def caller(c: int) -> None:
            for i in range(per):
                out = linear(c * per + i)
                assert out == {"n": c * per + i}, out

        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.callers) as pool:
            list(pool.map(caller, range(args.callers)))
        elapsed = time.perf_counter() - t
        runs = per * args.callers
        print(
            json.dumps(
                {
                    "system": "dbos-transact-py",
                    "workload": "W_linear",
                    "db": args.db,
                    "callers": args.callers,
                    "runs": runs,
                    "seconds": round(elapsed, 3),
                    "runs_per_s": round(runs / elapsed, 1),
                    "steps_per_s": round(runs * 3 / elapsed, 1),
                }
            )
        )
    finally:
        DBOS.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
        if args.db == "postgres":
            with psycopg.connect(args.pg_url, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


if __name__ == "__main__":
    main()
