"""Entry point for the lock tests: lock_holder.py FOLDER SECONDS holds FOLDER's run lock for SECONDS, printing
"rank R holds" once every rank of the job has it, or "rank R refused: <message>"."""

import sys
import time

from pagoda import dist_util, run_lock


def main():
    folder, seconds = sys.argv[1], float(sys.argv[2])
    dist_util.setup_dist()
    try:
        with run_lock.hold(folder):
            dist_util.barrier()
            print(f"rank {dist_util.get_rank()} holds", flush=True)
            time.sleep(seconds)
    except run_lock.FolderLockedError as exc:
        print(f"rank {dist_util.get_rank()} refused: {exc}", flush=True)
    dist_util.cleanup()


if __name__ == "__main__":
    main()
