"""One dropped file's journey: the step sequence (:mod:`.steps`), the scoring
step, the Prefect flow that wraps the steps as tasks, and the result types."""
