"""ConsumptionGate: no fetching while a circuit is open, and nothing run that arrives anyway.

The consumer is a stand-in holding the attributes the step reads; the channel and its QoS,
the task consumer, the messages and the timer are kombu's own (the in-memory transport), so
a rejected message really goes back to its queue and a cancelled queue really stops
delivering.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import InvalidTaskError
from celery.worker import state as worker_state
from kombu.asynchronous.timer import Timer
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.message import Message
from kombu.messaging import Consumer as TaskConsumer
from kombu.messaging import Producer
from kombu.transport import memory

from circuitgate.breaker import Admission, SharedCircuitBreaker
from circuitgate.breaker_set import BreakerSet
from circuitgate.gate import CLAIMED_HERE, ConsumptionGate
from circuitgate.settings import load_settings
from circuitgate.shared_state import State
from circuitgate_devkit.waiting import eventually

GUARDED = "app.guarded"
UNGUARDED = "app.unguarded"
PAUSER_INTERVAL = 0.1  # how often the step's pauser looks at the breakers


class Strategy:
    """Celery's handler of one task's messages, reduced to remembering what it was given."""

    def __init__(self) -> None:
        self.ran: list[Message] = []
        self.discards = False
        """Raise as Celery's strategy does for a message it cannot make a request of."""

    def __call__(self, message: Message, body: Any, ack: Any, reject: Any, *args: Any) -> str:
        if self.discards:
            raise InvalidTaskError("Task keyword arguments is not a mapping")
        self.ran.append(message)
        return "handled"


@dataclass
class Consumer:
    """The parts of Celery's Consumer that the gate step reads."""

    controller: SimpleNamespace
    task_consumer: TaskConsumer
    connection_errors: tuple[type[BaseException], ...] = memory.Transport.connection_errors
    timer: Timer = field(default_factory=Timer)
    handlers: dict[str, Strategy] = field(
        default_factory=lambda: {GUARDED: Strategy(), UNGUARDED: Strategy()}
    )
    """The strategies as Celery built them, before the gate wrapped any."""
    strategies: dict[str, Callable[..., Any]] = field(default_factory=dict)
    task_buckets: dict[str, Any] = field(default_factory=dict)
    """Celery's token buckets by task name: none, no rate limit set."""
    disable_rate_limits: bool = False
    blueprint: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(on_close=None))
    """Celery's consumer blueprint: what it calls first when it stops (`shutdown_handback`)."""
    delivered: list[str] = field(default_factory=list)
    """Ids of the task messages the transport delivered to the task consumer."""

    def __post_init__(self) -> None:
        self.strategies.update(self.handlers)
        self.task_consumer.register_callback(
            lambda body, _message: self.delivered.append(body["id"])
        )

    def update_strategies(self) -> None:
        """What Celery does on `pool_restart` and on a restart after a lost connection."""
        self.strategies.update(self.handlers)

    def handle(self, message: Message, task: str = GUARDED) -> Any:
        """What Celery's consumer does with a task message: give it to its task's strategy."""
        return self.strategies[task](message, message.decode(), message.ack, message.reject, [])


class ChannelWithoutQoS(memory.Channel):
    """Like py-amqp's channel (RabbitMQ pushes): nothing with a ``can_consume()`` to gate."""

    qos = None


@pytest.fixture
def connection() -> Iterator[Connection]:
    with Connection("memory://", transport_options={"polling_interval": 0.01}) as conn:
        yield conn


@pytest.fixture
def channel(connection: Connection) -> Any:
    return connection.channel()


@pytest.fixture
def cpu() -> str:
    # The in-memory broker is shared by the whole process: queues of this test alone.
    return f"cpu-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def gpu() -> str:
    return f"gpu-{uuid.uuid4().hex[:8]}"


def whole_worker() -> BreakerSet:
    return BreakerSet(load_settings({}))


def per_queue(gpu: str) -> BreakerSet:
    return BreakerSet(load_settings({"circuitgate_breakers": {"gpu": {"queues": [gpu]}}}))


def started(
    channel: Any,
    queues: list[str],
    breakers: BreakerSet,
    *,
    prefetch: int | None = 10,
    rate_limited: bool = False,
    disable_rate_limits: bool = False,
) -> tuple[Consumer, ConsumptionGate]:
    """A consumer of ``queues`` with the gate step started on it, consuming."""
    if prefetch is not None:
        channel.basic_qos(0, prefetch, False)
    consumer = Consumer(
        controller=SimpleNamespace(
            circuit_breakers=breakers,
            # A guarded task this worker has no strategy for (not imported) is skipped.
            circuit_guarded_tasks=frozenset({GUARDED, "app.not-registered"}),
        ),
        task_consumer=TaskConsumer(channel, [Queue(q, routing_key=q) for q in queues]),
        # A rate limit: Celery has a token bucket for the task, its messages may wait.
        task_buckets={GUARDED: object()} if rate_limited else {},
        disable_rate_limits=disable_rate_limits,
    )
    gate = ConsumptionGate(consumer)
    gate.start(consumer)
    consumer.task_consumer.consume()  # the event loop does this after the steps have started
    return consumer, gate


@dataclass
class Split:
    """A worker consuming ``cpu`` and ``gpu``, the GPU queue with a breaker of its own."""

    consumer: Consumer
    gate: ConsumptionGate
    gpu: SharedCircuitBreaker


@pytest.fixture
def split(channel: Any, cpu: str, gpu: str) -> Split:
    breakers = per_queue(gpu)
    consumer, gate = started(channel, [cpu, gpu], breakers)
    return Split(consumer, gate, breakers.get("gpu"))


def publish(channel: Any, queue: str, task_id: str, *, protocol: int = 2, **fields: Any) -> None:
    """A task message as Celery sends it: protocol 2 carries the id in headers, 1 in the body."""
    headers = {"id": task_id, "task": GUARDED, **fields} if protocol == 2 else {}
    Producer(channel).publish(
        {"id": task_id, "task": GUARDED, **fields},
        routing_key=queue,
        declare=[Queue(queue, routing_key=queue)],
        headers=headers,
    )


def take(channel: Any, queue: str, task_id: str, *, protocol: int = 2, **fields: Any) -> Message:
    """A message of ``queue`` received and not yet acknowledged, as if prefetched."""
    publish(channel, queue, task_id, protocol=protocol, **fields)
    message: Message | None = Queue(queue, routing_key=queue)(channel).get(no_ack=False)
    assert message is not None
    return message


def waiting(channel: Any, queue: str) -> list[str]:
    """The ids of the messages in ``queue`` (emptying it)."""
    bound = Queue(queue, routing_key=queue)(channel)
    ids = []
    while (message := bound.get(no_ack=True)) is not None:
        ids.append(message.payload["id"])
    return ids


def drain(connection: Connection, channel: Any, polls: int = 3) -> None:
    """Let the transport poll ``polls`` times, delivering what it may: enough for anything
    deliverable to arrive, so an empty delivery list then means nothing was let through.

    A poll is the channel asking its QoS whether it may consume (kombu's virtual channels do
    on every drain while they have consumers), which is where the gate answers.
    """
    asked = [0]
    can_consume = channel.qos.can_consume

    def counted() -> bool:
        asked[0] += 1
        return bool(can_consume())

    def polled() -> bool:
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.01)
        return asked[0] >= polls

    channel.qos.can_consume = counted
    try:
        eventually(polled, timeout=5, interval=0, what=f"{polls} polls of the transport")
    finally:
        channel.qos.can_consume = can_consume


def run_due_timers(timer: Timer, after: float = PAUSER_INTERVAL * 1.2) -> None:
    """Wait ``after`` seconds, then run what fell due, as the consumer's event loop would."""
    time.sleep(after)
    for _, entry in timer:
        if entry is None:
            return
        timer.apply_entry(entry)


# -- one breaker for the whole worker, on a channel with can_consume() (SQS, Redis) -----------

OPENINGS: dict[str, Callable[[SharedCircuitBreaker], object]] = {
    "tripped": SharedCircuitBreaker.open,
    "forced open": lambda breaker: breaker.force(State.FORCED_OPEN),
}


@pytest.mark.parametrize("opening", OPENINGS.values(), ids=OPENINGS.keys())
def test_an_open_circuit_makes_can_consume_false_and_the_estimate_one(
    channel: Any, cpu: str, opening: Callable[[SharedCircuitBreaker], object]
) -> None:
    breakers = whole_worker()
    _, gate = started(channel, [cpu], breakers)
    qos = channel.qos
    assert gate.pauser is None  # the channel's own poll is gated: nothing to cancel
    assert qos.can_consume()
    assert qos.can_consume_max_estimate() == 10
    opening(breakers.default)
    assert not qos.can_consume()
    assert qos.can_consume_max_estimate() == 1


def test_the_uncounted_look_answers_as_can_consume_without_counting_a_poll(
    channel: Any, cpu: str
) -> None:
    """The consumer watch looks once a tick; circuitgate_gate_polls_total counts polls only."""
    breakers = whole_worker()
    started(channel, [cpu], breakers)
    qos, breaker = channel.qos, breakers.default
    before = breaker.polls
    assert qos.circuitgate_has_credit() and breaker.polls == before
    breaker.open()
    assert not qos.circuitgate_has_credit() and breaker.polls == before
    assert not qos.can_consume() and breaker.polls == before + 1


def test_after_the_open_period_exactly_one_trial_comes_in_and_its_success_restores_batches(
    channel: Any, cpu: str
) -> None:
    breakers = whole_worker()
    started(channel, [cpu], breakers)
    qos = channel.qos
    breakers.default.open()
    breakers.default.half_open()  # the open period is over
    assert qos.can_consume()
    assert qos.can_consume_max_estimate() == 1  # SQS would otherwise fetch up to ten
    assert breakers.default.admit("trial") is Admission.TRIAL
    assert not qos.can_consume()  # the trial is out
    breakers.default.record_success("trial")
    assert qos.can_consume()
    assert qos.can_consume_max_estimate() == 10


def test_the_gate_narrows_the_transports_prefetch_limit_and_never_widens_it(
    channel: Any, cpu: str
) -> None:
    started(channel, [cpu], whole_worker(), prefetch=1)
    message = take(channel, cpu, "t1")  # one unacknowledged message fills the prefetch
    assert not channel.qos.can_consume()
    message.ack()
    assert channel.qos.can_consume()


def test_nothing_is_fetched_while_open_and_the_waiting_message_comes_after(
    connection: Connection, channel: Any, cpu: str
) -> None:
    breakers = whole_worker()
    consumer, _ = started(channel, [cpu], breakers)
    breakers.default.open()
    publish(channel, cpu, "t1")
    drain(connection, channel)
    assert consumer.delivered == []
    breakers.default.half_open()
    drain(connection, channel)
    assert consumer.delivered == ["t1"]


def test_a_forced_closed_circuit_fetches_in_batches_like_a_closed_one(
    channel: Any, cpu: str
) -> None:
    breakers = whole_worker()
    started(channel, [cpu], breakers)
    breakers.default.force(State.FORCED_CLOSED)
    assert channel.qos.can_consume()
    assert channel.qos.can_consume_max_estimate() == 10


# -- the strategy wrapper: what arrives anyway ------------------------------------------------


def test_a_message_refused_while_open_goes_back_to_its_queue_unexecuted_and_is_counted(
    channel: Any, cpu: str
) -> None:
    breakers = whole_worker()
    consumer, _ = started(channel, [cpu], breakers)
    message = take(channel, cpu, "t1")  # prefetched before the trip
    breakers.default.open()
    assert consumer.handle(message) is None
    assert consumer.handlers[GUARDED].ran == []
    assert message.acknowledged  # settled with the broker, not left for a visibility timeout
    assert waiting(channel, cpu) == ["t1"]
    assert breakers.default.snapshot().refused_total == 1
    assert breakers.default.snapshot().failures_total == 0  # not a failure


@pytest.mark.parametrize("protocol", [1, 2])
@pytest.mark.parametrize(
    "fields",
    [{"eta": "2030-01-01T00:00:00+00:00"}, {"expires": "2020-01-01T00:00:00+00:00"}, {}],
    ids=["eta", "expired", "revoked"],
)
def test_a_message_that_will_not_run_now_is_never_claimed_as_the_trial(
    channel: Any, cpu: str, fields: dict[str, str], protocol: int
) -> None:
    breakers = whole_worker()
    consumer, _ = started(channel, [cpu], breakers)
    later = take(channel, cpu, "later", protocol=protocol, **fields)
    breakers.default.open()
    breakers.default.half_open()
    with contextlib.ExitStack() as stack:
        if not fields:
            worker_state.revoked.add("later")
            stack.callback(worker_state.revoked.discard, "later")
        assert consumer.handle(later) == "handled"  # to Celery: its timer, or its revoke check
    assert breakers.default.snapshot().trial_id is None
    assert CLAIMED_HERE not in later.delivery_info  # so a discard gives back no one's claim
    assert breakers.default.admit("runs-now") is Admission.TRIAL


@pytest.mark.parametrize("disabled", [False, True], ids=["limited", "limits-disabled"])
def test_a_rate_limited_message_is_claimed_only_where_rate_limits_are_disabled(
    channel: Any, cpu: str, disabled: bool
) -> None:
    breakers = whole_worker()
    consumer, _ = started(channel, [cpu], breakers, rate_limited=True, disable_rate_limits=disabled)
    message = take(channel, cpu, "limited")
    breakers.default.open()
    breakers.default.half_open()
    assert consumer.handle(message) == "handled"
    # Waiting for its token it holds no claim; run at once (limits disabled) it is the trial.
    assert breakers.default.snapshot().trial_id == ("limited" if disabled else None)


def test_a_closed_circuit_hands_every_message_to_celery_as_it_came(channel: Any, cpu: str) -> None:
    breakers = whole_worker()
    consumer, _ = started(channel, [cpu], breakers)
    message = take(channel, cpu, "t1")
    assert consumer.handle(message) == "handled"
    assert consumer.handlers[GUARDED].ran == [message]
    assert not message.acknowledged  # Celery's strategy owns it now
    assert breakers.default.snapshot().refused_total == 0


@pytest.mark.parametrize("protocol", [2, 1])
def test_after_the_open_period_one_message_runs_as_the_trial_and_the_next_goes_back(
    channel: Any, cpu: str, protocol: int
) -> None:
    breakers = whole_worker()
    consumer, _ = started(channel, [cpu], breakers)
    breakers.default.open()
    breakers.default.half_open()
    trial, second = take(channel, cpu, "t1", protocol=protocol), take(channel, cpu, "t2")
    assert consumer.handle(trial) == "handled"
    assert consumer.handle(second) is None
    assert consumer.handlers[GUARDED].ran == [trial]
    assert trial.delivery_info[CLAIMED_HERE] is True  # this delivery holds the claim
    assert waiting(channel, cpu) == ["t2"]
    # The pool child that runs the trial asks with the task id and is let through.
    assert breakers.default.admit("t1") is Admission.TRIAL


@pytest.mark.parametrize("task_id", [5, ["x"], {"a": 1}], ids=["int", "list", "dict"])
def test_a_task_id_that_is_no_string_passes_the_gate_while_half_open(
    channel: Any, cpu: str, task_id: Any
) -> None:
    """JSON lets a client send any id; Celery runs an integer one. Past the closed circuit's
    shortcut the gate reads the id, and an exception there escapes Celery's consumer and
    ends the worker (then the next one the message reaches)."""
    breakers = whole_worker()
    consumer, _ = started(channel, [cpu], breakers)
    breakers.default.open()
    breakers.default.half_open()
    assert consumer.handle(take(channel, cpu, task_id)) == "handled"
    assert breakers.default.snapshot().trial_id == str(task_id)


def test_a_delivery_celery_discards_gives_back_the_trial_it_claimed(channel: Any, cpu: str) -> None:
    breakers = whole_worker()
    consumer, _ = started(channel, [cpu], breakers)
    breakers.default.open()
    breakers.default.half_open()
    consumer.handlers[GUARDED].discards = True
    with pytest.raises(InvalidTaskError):
        consumer.handle(take(channel, cpu, "invalid"))
    assert breakers.default.snapshot().trial_id is None
    assert breakers.default.admit("next") is Admission.TRIAL  # at once, not after trial_timeout


def test_a_discarded_second_delivery_of_the_trials_id_leaves_the_claim_to_the_first(
    channel: Any, cpu: str
) -> None:
    """Two deliveries of one task id (a redelivery, a duplicate publish) both hear TRIAL;
    the second, discarded by Celery, took no claim and gives none back."""
    breakers = whole_worker()
    consumer, _ = started(channel, [cpu], breakers)
    breakers.default.open()
    breakers.default.half_open()
    first, second = take(channel, cpu, "t1"), take(channel, cpu, "t1")
    assert consumer.handle(first) == "handled"
    consumer.handlers[GUARDED].discards = True
    with pytest.raises(InvalidTaskError):
        consumer.handle(second)
    assert CLAIMED_HERE not in second.delivery_info
    snapshot = breakers.default.snapshot()
    assert (snapshot.state, snapshot.trial_id) == (State.HALF_OPEN, "t1")
    assert breakers.default.admit("other") is Admission.REFUSE  # still one trial at a time


def test_tasks_the_breaker_does_not_guard_keep_their_strategy(channel: Any, cpu: str) -> None:
    consumer, _ = started(channel, [cpu], whole_worker())
    assert consumer.strategies[UNGUARDED] is consumer.handlers[UNGUARDED]
    assert consumer.strategies[GUARDED] is not consumer.handlers[GUARDED]
    assert consumer.strategies.keys() == {GUARDED, UNGUARDED}


@pytest.mark.parametrize("rebuild", ["pool_restart", "reconnect"])
def test_strategies_built_anew_are_gated_once(channel: Any, cpu: str, rebuild: str) -> None:
    breakers = whole_worker()
    consumer, gate = started(channel, [cpu], breakers)
    if rebuild == "reconnect":  # Celery stops the steps, rebuilds, then starts them again
        gate.stop(consumer)
        consumer.update_strategies()
        gate.start(consumer)
    else:
        consumer.update_strategies()
    breakers.default.open()
    breakers.default.half_open()
    trial, second = take(channel, cpu, "t1"), take(channel, cpu, "t2")
    assert consumer.handle(trial) == "handled"
    assert consumer.handle(second) is None  # gated: handed back, not run
    assert consumer.handlers[GUARDED].ran == [trial]
    assert waiting(channel, cpu) == ["t2"]
    assert consumer.strategies[GUARDED].__wrapped__ is consumer.handlers[GUARDED]  # once


# -- breakers bound to queues, or a transport that pushes (RabbitMQ): the pauser -------------


def test_a_breaker_bound_to_a_queue_pauses_that_queue_alone(
    connection: Connection, channel: Any, cpu: str, gpu: str
) -> None:
    breakers = per_queue(gpu)
    breakers.get("gpu").open()
    consumer, gate = started(channel, [cpu, gpu], breakers)
    assert gate.pauser is not None
    assert not consumer.task_consumer.consuming_from(gpu)
    assert consumer.task_consumer.consuming_from(cpu)
    assert channel.qos.can_consume()  # the CPU queue keeps flowing
    publish(channel, gpu, "on-gpu")
    publish(channel, cpu, "on-cpu")
    drain(connection, channel)
    assert consumer.delivered == ["on-cpu"]


def test_the_pauser_follows_the_breaker_on_the_consumers_timer(
    connection: Connection, channel: Any, split: Split, gpu: str
) -> None:
    consumer = split.consumer
    assert consumer.task_consumer.consuming_from(gpu)
    split.gpu.open()
    run_due_timers(consumer.timer)
    assert not consumer.task_consumer.consuming_from(gpu)
    publish(channel, gpu, "waited")
    drain(connection, channel)
    assert consumer.delivered == []
    split.gpu.close()
    run_due_timers(consumer.timer)
    assert consumer.task_consumer.consuming_from(gpu)
    drain(connection, channel)
    assert consumer.delivered == ["waited"]


def test_a_refusal_pauses_its_queue_at_once_and_the_message_is_not_delivered_back(
    connection: Connection, channel: Any, split: Split, gpu: str
) -> None:
    consumer = split.consumer
    message = take(channel, gpu, "t1")
    split.gpu.open()  # since the pauser last looked
    assert consumer.handle(message) is None
    assert not consumer.task_consumer.consuming_from(gpu)  # no timer has run
    drain(connection, channel)
    assert consumer.delivered == []
    assert waiting(channel, gpu) == ["t1"]


def test_a_queue_cancelled_by_an_admin_stays_cancelled_after_a_trip(split: Split, gpu: str) -> None:
    consumer = split.consumer
    consumer.task_consumer.cancel_by_queue(gpu)  # what cancel_consumer does to the consumer
    split.gpu.open()
    run_due_timers(consumer.timer)
    split.gpu.close()
    run_due_timers(consumer.timer)
    assert not consumer.task_consumer.consuming_from(gpu)


def test_a_queue_added_at_run_time_is_paused_with_its_breaker(
    channel: Any, cpu: str, gpu: str
) -> None:
    added = f"{gpu}-added"
    breakers = BreakerSet(
        load_settings({"circuitgate_breakers": {"gpu": {"queues": [gpu, added]}}})
    )
    consumer, _ = started(channel, [cpu, gpu], breakers)
    consumer.task_consumer.add_queue(Queue(added, routing_key=added))  # add_consumer
    consumer.task_consumer.consume()
    breakers.get("gpu").open()
    run_due_timers(consumer.timer)
    assert not consumer.task_consumer.consuming_from(added)


def test_a_transport_without_can_consume_is_paused_by_cancelling_its_consumer(
    connection: Connection, cpu: str
) -> None:
    breakers = whole_worker()
    breakers.default.open()
    consumer, gate = started(
        ChannelWithoutQoS(connection.connection), [cpu], breakers, prefetch=None
    )
    assert gate.pauser is not None
    assert not consumer.task_consumer.consuming_from(cpu)


def test_once_stopped_the_step_leaves_the_consumer_alone(split: Split, gpu: str) -> None:
    consumer, gate = split.consumer, split.gate
    gate.stop(consumer)
    gate.stop(consumer)  # a consumer restart may stop it twice
    split.gpu.open()
    run_due_timers(consumer.timer)
    assert consumer.task_consumer.consuming_from(gpu)


def test_the_step_is_left_out_of_a_worker_without_circuitgate() -> None:
    gate = ConsumptionGate(SimpleNamespace())
    assert not gate.include_if(SimpleNamespace(controller=SimpleNamespace(circuit_breakers=None)))
    assert gate.include_if(
        SimpleNamespace(controller=SimpleNamespace(circuit_breakers=whole_worker()))
    )
