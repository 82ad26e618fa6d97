"""Entry point for the lock tests: lock_holder.py FOLDER SECONDS holds FOLDER's run lock for SECONDS, printing
"rank R holds" once every rank of the job has it, or "rank R refused: <message>"."""

import sys
import time

from pagoda import dist_util, run_lock


def say(line):
    # One write per line: mpiexec forwards each write of a rank on its own, so a separate newline can land after
    # another rank's text.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    folder, seconds = sys.argv[1], float(sys.argv[2])
    dist_util.setup_dist()
    try:
        with run_lock.hold(folder):
            dist_util.barrier()
            say(f"rank {dist_util.get_rank()} holds")
            time.sleep(seconds)
    except run_lock.FolderLockedError as exc:
        say(f"rank {dist_util.get_rank()} refused: {exc}")
    dist_util.cleanup()


if __name__ == "__main__":
    main()
