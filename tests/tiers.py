"""The second copies that only the full tier runs: a test parametrised over two backends whose subject is not the backend.

`make test` runs each such test once, on the backend named in the test's id that stays; `make test-full` runs the
other copy too. docs/TESTS.md lists them (tests/test_tiers.py checks that it does and that each entry
names a real test). A copy whose subject is the backend itself (a broker's redelivery, a database's outage, the
embedded transport's shutdown) stays in both tiers.
"""

from __future__ import annotations

import pytest

# Node ids (path::name[param]) -> why `make test` runs that test on its other backend only.
FULL_TIER_COPIES: dict[str, str] = {
    "tests/integration/test_batches.py::test_every_job_of_a_killed_workers_batch_resumes_and_finishes_once[embedded]": (
        "the batch's side is the same on both; the embedded transport's redelivery of a killed worker's message is "
        "checked by test_job_of_a_killed_worker_resumes_elsewhere_from_its_saved_state[embedded]"
    ),
    "tests/integration/test_batches.py::test_jobs_submitted_together_run_as_one_batch_each_with_its_whole_history[embedded]": (
        "claiming batch mates on SQLite is checked by the runner's "
        "test_matching_queued_jobs_run_as_one_batch_each_with_its_own_history_and_the_picture_it_gets_alone[sqlite]"
    ),
    "tests/integration/test_faults.py::test_a_coarse_to_fine_job_killed_at_its_middle_scale_resumes_there[embedded]": (
        "its subject is the engine's resume across scales; a killed worker on the embedded backend is checked by "
        "test_job_of_a_killed_worker_resumes_elsewhere_from_its_saved_state[embedded]"
    ),
    "tests/integration/test_faults.py::test_a_job_handed_back_by_sigterm_says_it_resumed_where_its_worker_stopped[postgres+redis]": (
        "on Postgres + Redis the SIGTERM fault drill (test_sigterm_hands_the_running_job_back_and_the_worker_exits_at_once[fast]) "
        "hands a job back the same way and checks it resumes elsewhere"
    ),
    "tests/integration/test_faults.py::test_job_of_a_killed_worker_resumes_elsewhere_from_its_saved_state[postgres+redis]": (
        "on Postgres + Redis the fault drills kill a pool process and a whole worker mid-job, on shortened clocks, and "
        "check the job resumes elsewhere from its last save"
    ),
    "tests/integration/test_fault_drill_report.py::test_the_run_prints_each_drill_s_measured_time_in_its_summary[one-process]": (
        "the [xdist] copy checks the harder case: figures recorded in worker processes reach the summary"
    ),
}
# The runner's engine-heavy tests: the database only records what the engine does, and the SQLite copy checks it.
FULL_TIER_COPIES.update(
    {
        f"tests/worker/test_runner.py::{name}[postgres]": (
            "its subject is the engine's side of the runner (tiles, batches, scales); the [sqlite] copy checks it, and the "
            "runner's claims, leases and writes are checked on Postgres by its other tests"
        )
        for name in (
            "test_a_job_larger_than_one_pass_runs_alone_in_tiles_as_the_engine_makes_it",
            "test_a_batch_out_of_memory_goes_on_in_halves_each_from_its_saved_state",
            "test_matching_queued_jobs_run_as_one_batch_each_with_its_own_history_and_the_picture_it_gets_alone",
            "test_a_coarse_to_fine_job_records_the_scale_of_each_checkpoint",
            "test_a_job_blending_two_styles_runs_through_the_worker_in_a_batch_with_a_job_of_one_style",
            "test_a_canceled_job_leaves_the_batch_at_its_next_checkpoint_and_the_others_go_on",
        )
    }
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the listed copies `full`, before `-m` deselects by marker."""
    for item in items:
        if item.nodeid in FULL_TIER_COPIES:
            item.add_marker(pytest.mark.full)
