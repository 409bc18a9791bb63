"""A job's copy on its keeper, and take-over when the home dies: in process, on trio's virtual clock.

Two job boards (the home and a neighbour) share the in-memory satellites of
``test_job_board``; their copy records travel over an in-memory wire that
can lose them, and a home "dies" by having its board cancelled and being
declared dead.  Every output is exact arithmetic, so the taken-over result
can be checked input by input, and every execution is counted.
"""

from __future__ import annotations

import random
import uuid

import msgpack
import numpy as np
import pytest
import trio

from agent import wallclock
from agent.runtime.job_copies import TAKEOVER_GRACE_S, JobCopies
from agent.runtime.job_copy_store import CopyError, CopyStore
from agent.runtime.job_journal import JobJournal
from agent.runtime.jobs import JobBoard
from mesh.wire import JobCopy
from tests.test_job_board import Sky, clock, spec, until


def run_virtual(*args):
    """``trio.run`` on a virtual clock that the process's wall clock follows too: the copies'
    look runs as a chore on the process's heap, which keeps wall time."""
    c = clock()
    with wallclock.virtual(c):
        return trio.run(*args, clock=c)


class Wire:
    """Copy records between boards: delayed, lost at ``loss``, never delivered to a dead node."""

    def __init__(self, nursery: trio.Nursery, order: list[str], loss: float = 0.0, delay: float = 0.02):
        self.nursery, self.order, self.loss, self.delay = nursery, order, loss, delay
        self.copies: dict[str, JobCopies] = {}
        self.dead: set[str] = set()
        self.rng = random.Random(7)
        self.sent: list[tuple[str, str, str]] = []      # (sender, receiver, op)
        self.suspect: set[str] = set()                  # alive, but a home would not keep its copy there
        self.lose: dict[str, int] = {}                  # op -> how many more of them are lost

    def send(self, src: str, dst: str, job_id: str, op: str, body: bytes) -> str:
        self.sent.append((src, dst, op))
        if self.lose.get(op):
            self.lose[op] -= 1
            return ""
        if dst in self.dead or src in self.dead or self.rng.random() < self.loss:
            return ""       # on its way, and lost: the sender learns only from the missing ack
        msg = JobCopy(uuid.uuid4().hex, src, dst, job_id, op, body)

        async def deliver() -> None:
            await trio.sleep(self.delay)
            if dst not in self.dead and dst in self.copies:
                self.copies[dst].on_message(msg)
        self.nursery.start_soon(deliver)
        return ""


class CopyHost:
    max_frame_bytes = 64      # a slice of inputs is a few inputs: the copy takes many records

    def __init__(self, name: str, wire: Wire):
        self.name, self.wire = name, wire

    def choose_keeper(self, exclude):
        for n in self.wire.order:
            if n != self.name and n not in exclude and n not in self.wire.dead | self.wire.suspect:
                return n
        return None

    def keeper_problem(self, node):
        return f"{node} suspected" if node in self.wire.dead | self.wire.suspect else None

    def declared_dead(self, node):
        return node in self.wire.dead

    def send_copy(self, dst, job_id, op, body):
        return self.wire.send(self.name, dst, job_id, op, body)


class Station:
    """One node's job board, its journal, its copies, in a cancel scope of its own (cancelled = killed)."""

    def __init__(self, name: str, sky_of: Sky, wire: Wire, path):
        self.name, self.wire, self.path = name, wire, path
        self.sky = Sky(sky_of.nursery, list(sky_of.nodes), sky_of.compute_s)
        self.sky.nodes, self.sky.executions, self.sky.name = sky_of.nodes, sky_of.executions, name
        self.scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery) -> JobBoard:
        self.journal = JobJournal(self.path / f"{self.name}.sqlite")
        self.board = JobBoard(self.sky, self.journal, clock=trio.current_time)
        self.copies = JobCopies(CopyHost(self.name, self.wire), self.board, CopyStore(self.journal),
                                clock=trio.current_time)
        self.board.copies = self.copies
        self.wire.copies[self.name] = self.copies
        self.wire.dead.discard(self.name)
        self.scope = await nursery.start(self._serve)
        return self.board

    async def _serve(self, *, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as n:
                await n.start(self.board.serve)
                await n.start(self.copies.serve)
                task_status.started(scope)
                await trio.sleep_forever()

    def kill(self) -> None:
        self.wire.dead.add(self.name)
        del self.wire.copies[self.name]
        self.scope.cancel()
        self.journal.close()


async def fleet(tmp_path, body, loss=0.0, names=("home", "keeper", "spare"), compute_s=0.05):
    async with trio.open_nursery() as nursery:
        sky = Sky(nursery, ["s1", "s2", "s3", "s4"], compute_s)
        wire = Wire(nursery, list(names), loss)
        stations = {n: Station(n, sky, wire, tmp_path) for n in names}
        for st in stations.values():
            await st.start(nursery)
        try:
            with trio.fail_after(3600):      # virtual seconds: a copy that never completes fails, not hangs
                return await body(sky, wire, stations, nursery)
        finally:
            nursery.cancel_scope.cancel()


def test_the_keeper_holds_every_record_of_a_job_that_ends_at_home(tmp_path):
    async def body(sky, wire, st, nursery):
        job, _ = st["home"].board.submit(spec(40, shards=2, chunk=4), None)
        await job.done.wait()
        await until(lambda: st["home"].copies.describe(job.job_id) is None)     # every record acknowledged
        return job, st["keeper"].copies.store
    job, store = run_virtual(fleet, tmp_path, body)
    row = store.row(job.job_id)
    assert row.home == "home" and row.status == "succeeded" and row.inputs == 40
    assert store.progress(job.job_id) == (40, 40)
    kept = store.assemble(job.job_id)
    assert np.array_equal(kept.spec.inputs["x"], job.spec.inputs["x"])
    assert {c.lo: c.outputs["y"].tolist() for c in kept.chunks} == {lo: o["y"].tolist() for lo, (_, o) in job.chunks.items()}
    assert len(kept.moves) == 2


@pytest.mark.parametrize("loss", [0.0, 0.3])
def test_a_dead_homes_job_is_taken_over_by_its_keeper_and_every_input_is_kept_once(tmp_path, loss):
    async def body(sky, wire, st, nursery):
        job, _ = st["home"].board.submit(spec(80, shards=2, chunk=4, window=2), None)
        # A copy can be taken over once it holds every input: the home sends those first.
        await until(lambda: job.plan.completed >= 30 and st["keeper"].copies.store.progress(job.job_id)[0] == 80)
        copied = st["keeper"].copies.store.progress(job.job_id)[1]
        st["home"].kill()
        await until(lambda: job.job_id in st["keeper"].board.jobs)
        taken = st["keeper"].board.jobs[job.job_id]
        whole = {s.index for s in taken.plan.shards if s.finished}     # every output already in the copy
        await taken.done.wait()
        return job, taken, copied, sky, whole
    # slow satellites (2 s an input): the copy, resent through 30 % loss, completes long before the job
    job, taken, copied, sky, whole = run_virtual(fleet, tmp_path, body, loss, ("home", "keeper", "spare"), 2.0)
    assert taken.status == "succeeded" and taken.taken_from == "home"
    assert np.array_equal(taken.outputs()["y"], job.spec.inputs["x"] * 3)
    assert set(sky.executions) == set(range(80))
    # Re-executed: what the old home had not yet copied, plus what was in flight -- never more than
    # the take-over's own bound (resent) plus what the copy lagged behind the home's journal.
    extra = sum(c - 1 for c in sky.executions.values())
    lag = job.plan.completed - copied
    assert extra <= taken.plan.resent + lag + 2 * job.plan.window * job.plan.chunk
    assert len(whole) < len(taken.plan.shards)
    assert all("taken over by keeper: its home home was declared dead" in s.moves[-1].why
               for s in taken.plan.shards if s.index not in whole)


def test_a_home_that_comes_back_after_the_take_over_hands_its_job_over(tmp_path):
    async def body(sky, wire, st, nursery):
        job, _ = st["home"].board.submit(spec(200, shards=2, chunk=4, window=1), None)
        await until(lambda: job.plan.completed >= 20)
        st["home"].kill()
        await until(lambda: job.job_id in st["keeper"].board.jobs)
        back = await st["home"].start(nursery)        # its journal resumes the job; the keeper tells it
        await until(lambda: back.get(job.job_id) is not None and back.get(job.job_id).status != "running")
        again = back.get(job.job_id)
        taken = st["keeper"].board.jobs[job.job_id]
        await taken.done.wait()
        return again, taken, st["keeper"].copies.store.row(job.job_id)
    again, taken, row = run_virtual(fleet, tmp_path, body)
    assert again.status == "handed_over" and again.handed_to == "keeper"
    assert "taken over by keeper" in again.error
    assert taken.status == "succeeded" and row.told


def test_a_home_restarted_within_the_grace_resumes_its_own_job_and_its_keeper_leaves_it(tmp_path):
    async def body(sky, wire, st, nursery):
        job, _ = st["home"].board.submit(spec(120, shards=2, chunk=4, window=1), None)
        await until(lambda: job.plan.completed >= 20 and st["keeper"].copies.store.progress(job.job_id)[0] == 120)
        st["home"].kill()
        await trio.sleep(TAKEOVER_GRACE_S / 2)
        back = await st["home"].start(nursery)
        await until(lambda: back.get(job.job_id) is not None)
        again = back.get(job.job_id)
        await again.done.wait()
        await trio.sleep(TAKEOVER_GRACE_S)
        return again, st["keeper"]
    again, keeper = run_virtual(fleet, tmp_path, body)
    assert again.status == "succeeded" and again.handed_to is None
    assert np.array_equal(again.outputs()["y"], again.spec.inputs["x"] * 3)
    assert again.job_id not in keeper.board.jobs and keeper.copies.takeovers == 0
    assert keeper.copies.store.row(again.job_id).status == "succeeded"


def test_a_keeper_that_dies_is_replaced_and_the_new_one_gets_the_whole_copy(tmp_path):
    async def body(sky, wire, st, nursery):
        job, _ = st["home"].board.submit(spec(60, shards=2, chunk=4), None)
        await until(lambda: job.plan.completed >= 16)
        st["keeper"].kill()
        await job.done.wait()
        await until(lambda: st["home"].copies.describe(job.job_id) is None)
        return job, st["spare"].copies.store
    job, store = run_virtual(fleet, tmp_path, body)
    assert store.row(job.job_id).status == "succeeded"
    assert store.progress(job.job_id) == (60, 60)


def test_a_copy_missing_inputs_is_not_taken_over(tmp_path):
    async def body(sky, wire, st, nursery):
        keeper = st["keeper"].copies
        meta = spec(10).to_wire(with_inputs=False)
        keeper.on_message(JobCopy("a", "ghost", "keeper", "ghost-job-1", "accept",
                                  msgpack.packb({"key": "accept", "idem_key": None, "created": 0.0, "spec": meta})))
        wire.dead.add("ghost")
        await trio.sleep(TAKEOVER_GRACE_S + 3.0)
        return keeper
    keeper = run_virtual(fleet, tmp_path, body)
    assert "ghost-job-1" not in keeper.board.jobs and "ghost-job-1" in keeper._unassemblable
    with pytest.raises(CopyError, match="inputs 0–9 never reached"):
        keeper.store.assemble("ghost-job-1")


def test_bad_records_are_refused_and_nothing_is_acknowledged(tmp_path):
    async def body(sky, wire, st, nursery):
        keeper = st["keeper"].copies
        for op, raw in [("chunk", b"\xc1"), ("chunk", msgpack.packb([1, 2])), ("chunk", msgpack.packb({"key": "x"})),
                        ("inputs", msgpack.packb({"key": "inputs:0", "lo": 0, "hi": 1, "arrays": {"x": ["f4", [1], b"12"]}}))]:
            keeper.on_message(JobCopy(uuid.uuid4().hex, "home", "keeper", "home-job-1", op, raw))
        await trio.sleep(1.0)
        answered = list(wire.sent)
        job, _ = st["home"].board.submit(spec(8), None)
        await until(lambda: keeper.store.row(job.job_id) is not None)
        keeper.on_message(JobCopy("z", "intruder", "keeper", job.job_id, "end",
                                  msgpack.packb({"key": "end", "status": "cancelled", "finished": 1.0, "error": ""})))
        return keeper, answered, job
    keeper, answered, job = run_virtual(fleet, tmp_path, body)
    assert answered == []       # neither acknowledged nor answered at all
    assert keeper.store.row("home-job-1") is None
    assert keeper.store.row(job.job_id).status != "cancelled"     # only the job's home may end its copy


def test_copies_are_purged_after_their_end_or_their_deadline(tmp_path):
    store = CopyStore(JobJournal(tmp_path / "k.sqlite"))
    meta = spec(4).to_wire(with_inputs=False) | {"timeout_s": 100.0}
    for job_id, created in (("a-job-1", 0.0), ("a-job-2", 1000.0), ("a-job-3", 1000.0)):
        store.store(job_id, "a", "accept", {"idem_key": None, "created": created, "spec": meta})
    store.store("a-job-2", "a", "end", {"status": "succeeded", "finished": 1010.0, "error": ""})
    assert store.purge(retention_s=60.0, now=1050.0) == 1          # job 1: its deadline (100) long past
    assert store.purge(retention_s=60.0, now=1080.0) == 1          # job 2: ended at 1010
    assert [r.job_id for r in store.kept()] == ["a-job-3"]
    with pytest.raises(CopyError, match="keeper stores no"):
        store.store("a-job-3", "a", "ack", {})


def test_an_empty_store_answers_its_looks_without_a_query_until_a_copy_is_accepted(tmp_path):
    store = CopyStore(JobJournal(tmp_path / "k.sqlite"))
    queries: list[str] = []
    store.db.set_trace_callback(queries.append)
    assert store.kept() == [] and store.kept() == [] and store.kept() == []
    assert len(queries) == 1                         # the first look asks; the next two know
    meta = spec(4).to_wire(with_inputs=False) | {"timeout_s": 100.0}
    store.store("a-job-1", "a", "accept", {"idem_key": None, "created": 0.0, "spec": meta})
    assert [r.job_id for r in store.kept()] == ["a-job-1"]
    store.forget("a-job-1")
    assert store.kept() == [] and store.kept() == []
    assert CopyStore(store.journal).kept() == []     # a store opened on the same file asks again


def test_an_old_keeper_is_told_to_forget_until_it_does_so_only_the_new_one_takes_over(tmp_path):
    async def body(sky, wire, st, nursery):
        job, _ = st["home"].board.submit(spec(200, shards=2, chunk=4, window=1), None)
        await until(lambda: st["keeper"].copies.store.progress(job.job_id)[0] == 200)
        wire.lose["forget"] = 2               # the first two "forget"s to the old keeper are lost
        wire.suspect.add("keeper")
        await until(lambda: st["spare"].copies.store.progress(job.job_id)[0] == 200)
        await until(lambda: st["keeper"].copies.store.row(job.job_id) is None)
        await until(lambda: not st["home"].copies._forgets)          # acknowledged: no more telling
        forgets = sum(1 for _, dst, op in wire.sent if op == "forget" and dst == "keeper")
        wire.suspect.discard("keeper")
        st["home"].kill()
        await until(lambda: job.job_id in st["spare"].board.jobs)
        await st["spare"].board.jobs[job.job_id].done.wait()
        return st, job, forgets
    st, job, forgets = run_virtual(fleet, tmp_path, body, 0.0, ("home", "keeper", "spare"), 0.5)
    assert st["spare"].copies.takeovers == 1 and st["keeper"].copies.takeovers == 0
    assert st["spare"].board.jobs[job.job_id].status == "succeeded"
    assert forgets == 3         # two lost, the third kept and acknowledged


def test_two_nodes_driving_one_job_end_with_one_when_the_first_keeps_the_others_copy(tmp_path):
    async def body(sky, wire, st, nursery):
        keeper, spare = st["keeper"].copies, st["spare"].copies
        job, _ = st["home"].board.submit(spec(200, shards=2, chunk=4, window=1), None)
        await until(lambda: keeper.store.progress(job.job_id)[0] == 200)
        st["home"].kill()
        await until(lambda: job.job_id in st["keeper"].board.jobs)     # the keeper took it over
        # A second copy of the job (a keeper that never heard "forget") also takes it over, and chooses
        # as its own keeper the node that drives it already: that one tells it to yield.
        kept = keeper.store.assemble(job.job_id)
        assert st["spare"].board.adopt(kept)
        other = st["spare"].board.jobs[job.job_id]
        await until(lambda: other.status != "running")
        await st["keeper"].board.jobs[job.job_id].done.wait()
        return other, st["keeper"].board.jobs[job.job_id]
    other, driver = run_virtual(fleet, tmp_path, body, 0.0, ("home", "keeper", "spare"), 0.5)
    assert other.status == "handed_over" and other.handed_to == "keeper"
    assert driver.status == "succeeded"
