"""`python -m pagoda.evaluate REF SAMPLES [...]`: the evaluator (evaluations.evaluator, same command line) with
remote inputs: the batches and the Inception file may be gs://, az:// or Azure blob https:// paths, fetched once into
the cache (pagoda.remote). evaluations/ itself reads local files only and imports nothing from pagoda."""

from evaluations import evaluator

from . import remote


def main(argv=None):
    return evaluator.main(argv, localize=remote.localize)


if __name__ == "__main__":
    main()
