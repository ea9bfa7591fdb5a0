"""The exchange's bookkeeping in process (the hub actor's methods; Ray only carries the calls), on virtual
time: the loop is looptime's, whose clock jumps to the next timer when nothing else can run, so every
wait is asserted exactly (to the microsecond) however loaded the machine."""

from __future__ import annotations

from typing import Any

import anyio
import looptime
import pytest

from node_init.cluster import (
    Agent,
    AgentState,
    Assignment,
    Exchange,
    ExchangeAgent,
    ExchangeHub,
    InitExchange,
    needs_digest,
)


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "asyncio", {"loop_factory": looptime.new_event_loop}


async def timed(wait: Any) -> tuple[Any, float]:
    """What ``wait`` returned, and after how many (virtual) seconds."""
    began = anyio.current_time()
    got = await wait
    return got, round(anyio.current_time() - began, 6)


PIECE = 256 * 1024
IDLE_S = 600.0  # download.share_hub_idle_s's default: an actor's life with no init
CALL_S = 30.0  # Bounds.actor_call_s: a new hub's call to an older one
UNIT = ("w.bin", "e", 0, 3 * PIECE + 10)  # four pieces, the last one short


async def planned(nodes: tuple[str, ...] = ("a", "b", "c")) -> tuple[Exchange, str]:
    """An exchange where every node needs UNIT; returns it and UNIT's owner."""
    ex = Exchange(PIECE)
    await ex.expect(list(nodes))
    owners: dict[str, dict[Any, str]] = {}

    async def join(node: str) -> None:
        owners[node] = (await ex.join(node, [UNIT], 5.0)).owners

    async with anyio.create_task_group() as tg:  # the owner is chosen once every node has joined
        for node in nodes:
            tg.start_soon(join, node)
    assert len({o[UNIT] for o in owners.values()}) == 1
    return ex, owners[nodes[0]][UNIT]


@pytest.mark.anyio
async def test_a_piece_is_taken_before_its_range_has_finished_downloading() -> None:
    ex, owner = await planned()
    consumer = next(n for n in "abc" if n != owner)
    await ex.offer(owner, UNIT, 0, ["piece-0"], PIECE)  # the owner has read the first piece only
    assert await ex.take(consumer, UNIT, 0, 1.0) == ["piece-0"]
    await ex.finished(owner)  # and will offer no more: the consumer reads the rest from the source
    assert await timed(ex.take(consumer, UNIT, 1, 5.0)) == (None, 0.0)  # at once, not at the wait's end


@pytest.mark.anyio
async def test_a_silent_owner_s_range_is_taken_over_by_one_node_not_read_by_each() -> None:
    """An owner that offers nothing for a whole wait and has not finished (hung, or dead before Ray
    says so): the first node whose wait ends reads the range and offers it; the other waits for
    that, not for the source; the old owner's later offers are refused."""
    ex, owner = await planned()
    first, second = [n for n in "abc" if n != owner]
    await ex.offer(owner, UNIT, 0, ["piece-0"], PIECE)
    for node in (first, second):
        assert await ex.take(node, UNIT, 0, 1.0) == ["piece-0"]
    got: dict[str, Any] = {}

    async def take(node: str, wait: float) -> None:
        got[node] = await timed(ex.take(node, UNIT, 1, wait))

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, first, 0.2)
        tg.start_soon(take, second, 0.3)  # its wait ends after the takeover: it waits on
        await anyio.sleep(0.4)
        assert got == {first: ("own", 0.2)}
        assert await ex.offer(first, UNIT, 1, ["again-1"], PIECE) == "ok"
    assert got == {first: ("own", 0.2), second: (["again-1"], 0.4)}
    assert await ex.offer(owner, UNIT, 1, ["late-1"], PIECE) == "refused"


@pytest.mark.anyio
async def test_an_owner_offering_its_other_ranges_is_not_hung() -> None:
    """Silence is the owner's, not the range's: an owner that keeps offering pieces of another range
    is busy, not hung. A wait on its late range ends at the budget (two waits), and the node reads
    the rest alone; the range stays its owner's, whose later offer is taken by the others. An owner
    silent on everything is taken over after one wait."""
    other = ("v.bin", "e", 0, 8 * PIECE)
    ex = Exchange(PIECE)
    await ex.expect(["a", "b"])
    async with anyio.create_task_group() as tg:  # "a" read both ranges before joining: it owns them
        tg.start_soon(ex.join, "a", [UNIT, other], 5.0, [UNIT, other])
        tg.start_soon(ex.join, "b", [UNIT, other], 5.0, [])

    async def busy_on_other() -> None:
        for i in range(8):
            await anyio.sleep(0.5)
            assert await ex.offer("a", other, i, [f"o{i}"], PIECE) == "ok"

    async with anyio.create_task_group() as tg:
        tg.start_soon(busy_on_other)
        assert await timed(ex.take("b", UNIT, 0, 1.0)) == (None, 2.0)  # the budget, not a takeover
    assert await ex.offer("a", UNIT, 0, ["p0"], PIECE) == "ok"  # still a's
    assert await timed(ex.take("b", UNIT, 1, 1.0)) == ("own", 1.0)  # now silent on everything


@pytest.mark.parametrize("budget", [None, 0.45])
@pytest.mark.anyio
async def test_a_wait_on_a_range_taken_over_late_stays_within_its_budget(budget: float | None) -> None:
    """The range is taken over just before the second node's wait ends, and its new owner then
    offers nothing. The second node's whole wait stays within its budget (two waits by default):
    it gives the new owner a wait of its own, and then takes the range over in turn (the new
    owner is silent too); with less budget than that, it reads the range itself at the budget and
    leaves it with the new owner, who is not silent yet."""
    ex, owner = await planned()
    first, second = [n for n in "abc" if n != owner]
    got: dict[str, Any] = {}

    async def take(node: str, wait: float, budget: float | None = None) -> None:
        got[node] = await timed(ex.take(node, UNIT, 0, wait, budget))

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, second, 0.3, budget)
        await anyio.sleep(0.05)
        tg.start_soon(take, first, 0.2)  # its wait ends at 0.25 s, the second's at 0.3 s
    assert got[first] == ("own", 0.2)
    if budget is None:  # the new owner's wait: from the takeover at 0.25 s, 0.3 s more
        assert got[second] == ("own", 0.55)
        assert await ex.offer(first, UNIT, 0, ["late-0"], PIECE) == "refused"
    else:
        assert got[second] == (None, budget)
        assert await ex.offer(first, UNIT, 0, ["new-0"], PIECE) == "ok"  # it stays with its new owner


@pytest.mark.anyio
async def test_a_wait_shorter_than_the_silence_bound_never_takes_a_range_over() -> None:
    """A node left with less than a whole wait (a retry after a lost piece) gives up at its budget
    and reads the range itself: too short a wait to call its owner hung."""
    ex, owner = await planned()
    consumer = next(n for n in "abc" if n != owner)
    assert await timed(ex.take(consumer, UNIT, 0, 1.0, 0.1)) == (None, 0.1)
    assert await ex.offer(owner, UNIT, 0, ["piece-0"], PIECE) == "ok"  # it still owns the range


@pytest.mark.anyio
async def test_a_lost_piece_s_range_is_taken_over_by_the_first_node_to_lose_it() -> None:
    """Taken offers whose objects cannot be read (the owner's node died before Ray said so, or the
    owner hangs): the first node to say so owns the range, the owner's offers are withdrawn (its
    memory bound with them), and the other node takes the new owner's pieces."""
    ex, owner = await planned()
    first, second = [n for n in "abc" if n != owner]
    for i in range(2):
        assert await ex.offer(owner, UNIT, i, [f"old-{i}"], PIECE, limit=2 * PIECE) == "ok"
    for node in (first, second):
        assert await ex.take(node, UNIT, 0, 1.0) == ["old-0"]
    assert await ex.lost(first, UNIT, 0) == "own"
    assert await ex.lost(second, UNIT, 0) == "retry"
    assert await ex.room(owner, 2 * PIECE, 2 * PIECE, 0.05)  # its withdrawn offers no longer count
    assert await ex.offer(first, UNIT, 0, ["new-0"], PIECE) == "ok"
    with anyio.fail_after(5):
        assert await ex.take(second, UNIT, 0, 1.0) == ["new-0"]
    assert await ex.offer(owner, UNIT, 2, ["old-2"], PIECE) == "refused"


@pytest.mark.anyio
async def test_a_lost_piece_that_was_offered_again_is_taken_again_not_taken_over() -> None:
    """A node could not read the old owner's offer, but the range's new owner (who took it over
    when the old one went silent) has offered that piece again since: the node takes the new
    offer; the new owner keeps the range, and the old owner's held bytes are released."""
    ex, owner = await planned()
    first, second = [n for n in "abc" if n != owner]
    assert await ex.offer(owner, UNIT, 0, ["old-0"], PIECE, limit=PIECE) == "ok"
    assert await ex.take(first, UNIT, 0, 1.0) == ["old-0"]  # and its read of the object hangs
    with anyio.fail_after(5):
        assert await ex.take(second, UNIT, 1, 0.1) == "own"  # the owner went silent
    assert await ex.offer(second, UNIT, 0, ["new-0"], PIECE) == "ok"  # it reads from the start
    assert await ex.room(owner, PIECE, PIECE, 0.05)  # the replaced offer no longer counts
    assert await ex.lost(first, UNIT, 0, ["old-0"]) == "retry"
    assert await ex.take(first, UNIT, 0, 1.0) == ["new-0"]
    assert await ex.lost(first, UNIT, 0, ["new-0"]) == "own"  # the new owner's own piece lost: taken over


@pytest.mark.anyio
async def test_offered_bytes_are_released_once_every_consumer_took_them() -> None:
    ex, owner = await planned()
    consumers = [n for n in "abc" if n != owner]
    sizes = [PIECE, PIECE, PIECE, 10]
    for i, size in enumerate(sizes):
        await ex.offer(owner, UNIT, i, [f"p{i}"], size)
    assert not await ex.room(owner, 1, sum(sizes), 0.05)  # the memory bound is reached
    for node in consumers:
        for i in range(len(sizes)):
            assert await ex.take(node, UNIT, i, 1.0) == [f"p{i}"]
            await ex.taken(node, UNIT, i)
    assert await ex.room(owner, sum(sizes), sum(sizes), 0.05)
    assert await ex.drained(owner, 0.05)


@pytest.mark.anyio
async def test_asking_for_the_next_piece_releases_the_one_before() -> None:
    """One call per piece each way: a take says the piece before it was written, an offer waits for room."""
    ex, owner = await planned(("a", "b"))
    consumer = "b" if owner == "a" else "a"
    assert await ex.offer_all(owner, [(UNIT, 0, ["p0"], PIECE), (UNIT, 1, ["p1"], PIECE)], 2 * PIECE, 0.05) \
        == ["ok", "ok"]
    assert await ex.offer(owner, UNIT, 2, ["p2"], PIECE, 2 * PIECE, 0.05) == "full"  # the bound holds...
    assert await ex.take(consumer, UNIT, 0, 1.0) == ["p0"]
    assert await ex.take(consumer, UNIT, 1, 1.0) == ["p1"]  # ...until piece 0 is written
    assert await ex.room(owner, PIECE, 2 * PIECE, 0.05)
    # The "full" answer skipped the rest of the range: from the source, at once.
    assert await timed(ex.take(consumer, UNIT, 2, 5.0)) == (None, 0.0)
    assert await ex.drained(owner, 0.05)  # and what was offered is no longer held for it


@pytest.mark.anyio
async def test_a_consumer_that_reads_from_the_source_releases_what_waits_for_it() -> None:
    ex, owner = await planned()
    first, second = [n for n in "abc" if n != owner]
    await ex.offer(owner, UNIT, 0, ["p0"], PIECE)
    await ex.offer(owner, UNIT, 1, ["p1"], PIECE)
    await ex.taken(first, UNIT, 0)
    await ex.taken(first, UNIT, 1)
    await ex.release(second, UNIT)  # a lost piece: the rest of its range comes from the source
    assert await ex.drained(owner, 0.05)


@pytest.mark.anyio
async def test_a_dead_owners_range_is_taken_over_once_and_the_others_wait_for_the_new_owner() -> None:
    ex, owner = await planned()
    first, second = sorted(n for n in "abc" if n != owner)
    await ex.offer(owner, UNIT, 0, ["old-0"], PIECE)
    await ex.offer(owner, UNIT, 1, ["old-1"], PIECE)
    for node, had in ((first, 1), (second, 2)):  # `first` has piece 0, `second` pieces 0 and 1
        for i in range(had):
            assert await ex.take(node, UNIT, i, 1.0) == [f"old-{i}"]
            await ex.taken(node, UNIT, i)
    await ex.gone(owner)  # its objects died with it
    wants = {first: 1, second: 2}
    got: dict[str, object] = {}

    async def take(node: str) -> None:
        got[node] = await ex.take(node, UNIT, wants[node], 5.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, first)
        tg.start_soon(take, second)
        await anyio.sleep(0.2)
        # One survivor owns the range now; the other waits for it instead of going to the source.
        assert sorted(map(str, got.values())) == ["own"], got
        new_owner = next(iter(got))
        other = second if new_owner == first else first
        for i in range(4):  # the new owner reads the range again from the start, offering every piece
            await ex.offer(new_owner, UNIT, i, [f"new-{i}"], PIECE if i < 3 else 10)
    assert got[other] == [f"new-{wants[other]}"]
    # The pieces `other` already had were not held for it: once it takes the rest, nothing is held.
    for i in range(wants[other], 4):
        await ex.taken(other, UNIT, i)
    assert await ex.drained(new_owner, 0.05)


@pytest.mark.anyio
async def test_pieces_after_a_skip_are_not_waited_for() -> None:
    ex, owner = await planned()
    consumer = next(n for n in "abc" if n != owner)
    await ex.offer(owner, UNIT, 0, ["p0"], PIECE)
    await ex.skip(UNIT, 1)  # over the memory bound: the owner offers nothing more of the range
    assert await ex.take(consumer, UNIT, 0, 1.0) == ["p0"]
    assert await timed(ex.take(consumer, UNIT, 1, 5.0)) == (None, 0.0)  # at once, not at the wait's bound


@pytest.mark.anyio
async def test_a_node_that_guessed_wrong_is_told_before_it_waits_or_offers() -> None:
    """Nodes read by their provisional owners before everyone joined; the exchange corrects them:
    a take waits for the assignment, a range nobody claimed goes to a node that needs it (which then
    reads it itself), of two claimants one owns the range and the other's offer is refused."""
    other, u2, u3 = ("x.bin", "e", 0, PIECE), ("y.bin", "e", 0, PIECE), ("z.bin", "e", 0, PIECE)
    ex = Exchange(PIECE)
    await ex.expect(["a", "b", "c"])
    answers: dict[str, object] = {}
    joined: dict[str, dict[Any, str]] = {}

    async def take_early(node: str, unit: Any) -> None:
        answers[unit[0]] = await ex.take(node, unit, 0, 5.0)

    async def join(node: str, units: list[Any], claimed: list[Any]) -> None:
        joined[node] = (await ex.join(node, units, 5.0, claimed)).owners

    async with anyio.create_task_group() as tg:
        tg.start_soon(take_early, "b", UNIT)  # b guessed c owns UNIT and u2 (it thought c needed them)
        tg.start_soon(take_early, "b", u2)
        await anyio.sleep(0.1)
        assert answers == {}  # both wait for the assignment
        tg.start_soon(join, "a", [UNIT, u2, u3], [UNIT, u3])
        tg.start_soon(join, "b", [UNIT, u2, u3], [u3])
        tg.start_soon(join, "c", [other], [other])  # c needs only `other`, which nobody else needs
        with anyio.fail_after(2):
            while u2[0] not in answers:
                await anyio.sleep(0.01)
        assert joined["a"][UNIT] == "a"  # the only claimant owns it
        assert answers[u2[0]] == "yours"  # unclaimed: the less loaded node that needs it reads it itself
        loser = "a" if joined["a"][u3] == "b" else "b"
        assert await ex.offer(loser, u3, 0, ["wrong"], PIECE) == "refused"  # two claimants: one owns it
        assert await ex.offer("c", other, 0, ["lone"], PIECE) == "refused"  # one node needs it: not shared
        assert await ex.offer("a", UNIT, 0, ["p0"], PIECE) == "ok"
    assert answers[UNIT[0]] == ["p0"]  # b's early take got the owner's piece
    assert await timed(ex.take("c", other, 0, 5.0)) == (None, 0.0)  # not shared: from the source, at once



@pytest.mark.anyio
async def test_the_hub_keeps_inits_apart_and_drops_each_when_closed_or_abandoned() -> None:
    """One hub serves every init: a node's call may make an init's state before the replica's
    open lands; a closed init's late call is refused (the node reads from the source); an init
    nobody called for its bound (its replica died) is dropped by a later init's call."""
    hub = ExchangeHub(IDLE_S, CALL_S)
    await hub.open("one", PIECE, 60.0, IDLE_S)
    await hub.expect(("two", PIECE, 0.05), ["a", "b"])
    assert await hub.inits() == ["one", "two"]
    await hub.expect(("one", PIECE, 60.0), ["a"])
    [answer] = await hub.join(("one", PIECE, 60.0), "a", needs_digest([UNIT]), [[UNIT]], 1.0, [], [None])
    assert answer.owners == {} and answer.member("a")  # alone in "one": nothing shared
    await hub.close("one")
    with pytest.raises(LookupError, match="one is closed"):
        await hub.gone(("one", PIECE, 60.0), "a")
    await anyio.sleep(0.1)
    await hub.open("three", PIECE, 60.0, IDLE_S)
    assert await hub.inits() == ["three"]


def test_an_init_exchange_travels_to_node_tasks_whole() -> None:
    import pickle

    sent = pickle.loads(pickle.dumps(InitExchange("hub", "init-1", PIECE, 30.0)))
    assert (sent.hub, sent.init, sent.piece, sent.bound_s) == ("hub", "init-1", PIECE, 30.0)
    assert sent.key == ("init-1", PIECE, 30.0) and "init-1" in repr(sent)


def params(cls: type, name: str) -> list[str]:  # Ray's tracing adds _ray_trace_ctx to an actor's methods
    import inspect

    return [p for p in list(inspect.signature(getattr(cls, name)).parameters)[1:] if not p.startswith("_ray")]


def test_every_hub_call_is_a_method_of_the_hub_and_of_an_init_s_handle() -> None:
    """What a node calls on its InitExchange, the hub has, with the init's key first (no dispatch by name),
    and it is only who owns what: no piece passes through the hub."""
    import inspect

    calls = {n for n, _ in inspect.getmembers(InitExchange, inspect.isfunction) if not n.startswith("_")} - {"close"}
    assert calls == {"expect", "join", "rehome", "gone"}
    for name in calls:
        assert params(ExchangeHub, name)[0] == "key" and inspect.iscoroutinefunction(getattr(ExchangeHub, name))
        assert params(ExchangeHub, name)[1:] == params(InitExchange, name), name


def test_every_agent_call_is_a_method_of_the_agent_and_of_its_handle() -> None:
    """A node's Agent handle (one init's) has each of the agent actor's calls, which take the init's
    key first, and each is the exchange's own logic (the agent adds only its node)."""
    import inspect

    calls = {n for n, _ in inspect.getmembers(Agent, inspect.isfunction) if not n.startswith("_")}
    for name in calls:
        assert inspect.iscoroutinefunction(getattr(ExchangeAgent, name)), name
        if name == "close":  # the init's state, dropped by its id
            assert params(ExchangeAgent, name) == ["init"] and params(Agent, name) == []
            continue
        assert params(ExchangeAgent, name) == ["key", *params(Agent, name)], name
        if name != "held":
            ours = params(Exchange, name)
            # The agent adds its node to adopt; a take carries the answer, for an agent whose node hung.
            extra = {"adopt": ours[:-1], "take_run": [*ours, "assignment"]}
            assert params(Agent, name) == extra.get(name, ours), name


class _Hub(ExchangeHub):
    """The hub with its exit recorded instead of ending the process (no Ray here)."""

    def __init__(self) -> None:
        super().__init__(IDLE_S, CALL_S)
        self.exited_at: float | None = None

    def _exit(self) -> None:
        self.exited_at = anyio.current_time()

    async def _remove_older(self) -> list[str]:
        return []


@pytest.mark.anyio
async def test_the_hub_exits_once_idle_for_its_bound_and_never_with_an_init_open() -> None:
    hub = _Hub()
    began = anyio.current_time()
    await hub.open("one", PIECE, 3600.0, idle_s=100.0)
    await anyio.sleep(250)
    assert hub.exited_at is None  # an init is open: however long
    await hub.close("one")
    closed = anyio.current_time()
    await anyio.sleep(200)
    assert hub.exited_at is not None and 100 <= hub.exited_at - closed <= 125, hub.exited_at - began
    assert await hub.exit_if_idle()  # a newer hub asking an idle one


@pytest.mark.anyio
async def test_an_abandoned_init_expires_and_then_the_hub_exits() -> None:
    """A replica that died mid-init never closes its exchange: its state goes at its bound, and
    then the hub is idle."""
    hub = _Hub()
    await hub.open("abandoned", PIECE, 50.0, idle_s=100.0)
    assert not await hub.exit_if_idle()  # an init is open: a newer hub must leave this one be
    await anyio.sleep(80)  # its bound, and the watch's next look (a quarter of idle_s)
    assert await hub.inits() == []  # expired by the hub's own watch, not by another init's call
    await anyio.sleep(100)
    assert hub.exited_at is not None


@pytest.mark.anyio
async def test_the_held_bytes_the_hub_reports_follow_every_offer_and_take() -> None:
    """What feeds ``node_init_exchange_held_bytes``: each change is told, and they sum to what the
    exchange holds back for the memory bound, back to zero once every consumer took every piece."""
    changes: list[tuple[str, int]] = []
    ex = Exchange(PIECE, on_held=lambda node, delta: changes.append((node, delta)))
    await ex.expect(["a", "b", "c"])
    async with anyio.create_task_group() as tg:
        for node in "abc":
            tg.start_soon(ex.join, node, [UNIT], 5.0, [UNIT] if node == "a" else [])
    for i, size in enumerate([PIECE, PIECE, PIECE, 10]):
        await ex.offer("a", UNIT, i, [f"p{i}"], size)
    assert sum(d for n, d in changes if n == "a") == ex.held()["a"] == 3 * PIECE + 10
    for node in "bc":
        for i in range(4):
            await ex.taken(node, UNIT, i)
    assert sum(d for n, d in changes if n == "a") == 0 and ex.held() == {}


async def split(nodes: tuple[str, ...] = ("a", "b", "c")) -> tuple[Exchange, dict[str, AgentState], Assignment]:
    """The exchange as a cluster runs it: the hub's assigns UNIT, and each node's agent adopts the answer."""
    hub = Exchange(PIECE)
    await hub.expect(list(nodes))
    answers: list[Assignment] = []

    async def join(node: str) -> None:
        answers.append(await hub.join(node, [UNIT], 5.0, agent=node, digest=needs_digest([UNIT])))

    async with anyio.create_task_group() as tg:
        for node in nodes:
            tg.start_soon(join, node)
    assert all(a is answers[0] for a in answers)  # one answer, made once, for every node
    agents = {node: AgentState(PIECE) for node in nodes}
    for node, agent in agents.items():
        await agent.adopt(answers[0], node)
    return hub, agents, answers[0]


@pytest.mark.anyio
async def test_the_hub_answers_every_node_with_one_assignment_and_each_agent_hands_out_its_own() -> None:
    hub, agents, answer = await split()
    owner = answer.owners[UNIT]
    assert answer.agents == {"a": "a", "b": "b", "c": "c"} and hub.knows(needs_digest([UNIT]))
    home = agents[owner]
    for i, size in enumerate([PIECE, PIECE, PIECE, 10]):
        assert await home.offer(owner, UNIT, i, [f"p{i}"], size) == "ok"
    consumer = next(n for n in "abc" if n != owner)
    # A node behind its owner gets every offer already made in one answer, and one note releases them.
    assert await home.take_run(consumer, UNIT, 0, 1.0) == [["p0"], ["p1"], ["p2"], ["p3"]]
    await home.taken(consumer, UNIT, 3)
    other = next(n for n in "abc" if n not in (owner, consumer))
    assert await home.take_run(other, UNIT, 2, 1.0) == [["p2"], ["p3"]]  # from where it is (it has 0 and 1)
    await home.taken(other, UNIT, 3)
    assert home.held() == {}  # every consumer has every piece: the owner's objects may go
    waiting = next(a for n, a in agents.items() if n != owner)
    assert await timed(waiting.take_run(consumer, UNIT, 0, 0.5)) == (None, 0.5)  # not handed out there


@pytest.mark.anyio
async def test_an_agent_that_died_is_replaced_once_by_the_first_node_to_find_it_gone() -> None:
    """Its node died (agent and all): the first peer to tell the hub reads the range and hands it
    out from its own agent; the others are sent there, and wait for its offers."""
    hub, agents, answer = await split()
    owner = answer.owners[UNIT]
    first, second = sorted(n for n in "abc" if n != owner)
    assert await hub.rehome(first, UNIT, owner) == "own"
    assert await hub.rehome(second, UNIT, owner) == first  # already replaced: where it is handed out now
    assert await hub.rehome(second, UNIT, first) == "own"  # and if that one died too, once more
    got: list[Any] = []

    async def take() -> None:
        got.append(await timed(agents[first].take_run(second, UNIT, 0, 5.0)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await anyio.sleep(0.25)  # the new home has not learned of the range yet: the take waits for it
        await agents[first].home(UNIT, first)
        assert await agents[first].offer(first, UNIT, 0, ["again"], PIECE) == "ok"
    assert got == [([["again"]], 0.25)]


@pytest.mark.anyio
async def test_a_node_that_joined_too_late_is_in_no_group_and_takes_nothing() -> None:
    hub = Exchange(PIECE)
    await hub.expect(["a", "b", "late"])
    async with anyio.create_task_group() as tg:
        for node in "ab":
            tg.start_soon(hub.join, node, [UNIT], 2.0)
    answer = await hub.join("late", [UNIT], 2.0)
    assert answer.member("a") and answer.member("b") and not answer.member("late")
    assert set(answer.owners.values()) <= {"a", "b"}


@pytest.mark.anyio
async def test_nodes_that_need_the_same_ranges_send_them_once() -> None:
    """The hub reads a node's ranges only if no node sent the same ones before (by digest), however
    many join at once."""
    hub = ExchangeHub(IDLE_S, CALL_S)
    key = ("init", PIECE, 60.0)
    await hub.expect(key, ["a", "b"])
    digest = needs_digest([UNIT])

    class Unread:  # the ranges, which the hub would read were it to
        def __iter__(self) -> Any:
            raise AssertionError("read twice")

    async with anyio.create_task_group() as tg:  # at once: b waits for a's read rather than read its own
        tg.start_soon(hub.join, key, "a", digest, [[UNIT]], 5.0, [UNIT], ["agent-a"])
        tg.start_soon(hub.join, key, "b", digest, [Unread()], 5.0, [], ["agent-b"])
    [answer] = await hub.join(key, "a", digest, [[UNIT]], 5.0, [UNIT], ["agent-a"])
    assert answer.owners == {UNIT: "a"} and answer.agents == {"a": "agent-a", "b": "agent-b"}


def documented(section: str) -> set[str]:
    """The messages a section of docs/exchange.md lists: the first cell of each table row, in backticks."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "exchange.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|", body, re.MULTILINE)}


def calls_of(actor: type) -> set[str]:
    import inspect

    return {n for n, f in inspect.getmembers(actor, inspect.iscoroutinefunction) if not n.startswith("_")}


@pytest.mark.parametrize(("section", "actor"), [("Messages to the hub", ExchangeHub),
                                                 ("Messages to an agent", ExchangeAgent)])
def test_the_exchange_document_lists_every_call_of_each_actor_and_no_other(section: str, actor: type) -> None:
    assert documented(section) == calls_of(actor)


def test_answers_are_typed_and_equal_their_wire_values() -> None:
    """A member compares equal to its value in any process (a copy of the enum sent by value too)."""
    from node_init.cluster import Answer

    assert {a.value for a in Answer} == {"ok", "refused", "full", "stopped", "own", "yours", "retry"}
    assert Answer("own") is Answer.OWN and Answer.OWN == "own"
