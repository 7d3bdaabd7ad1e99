"""One dropped file's journey: the step sequence (:mod:`.per_file`), the scoring
step, the reconciler that re-drives stranded files, and the Prefect flows that
wrap them."""
