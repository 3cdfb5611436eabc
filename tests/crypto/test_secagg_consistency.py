"""secagg / secagg+ against a deviating party: the consistency check, endorsement tags, sealed
and revealed shares."""

from __future__ import annotations

import pytest

from crypto import (
    DropoutError,
    ProtocolError,
    RoundSpec,
)
from crypto.core.identity import Roster
from crypto.errors import AuthenticationError
from crypto.secagg import messages as msg
from crypto.secagg.client import endorsement_tag, survivor_statement
from tests.crypto.secagg_helpers import (
    OPTS,
    inputs,
    payload_of,
    reframe,
    secagg_proto,
    to_stage,
)


# -- refusals and tampering ------------------------------------------------------------
def _unmask_setup(stage=3):
    proto = secagg_proto("secagg", **OPTS)
    spec = RoundSpec("t", 1, tuple(range(5)), 9)
    vecs, weights = inputs(5, 9)
    return to_stage(proto, spec, vecs, weights, stage)


@pytest.mark.parametrize(
    ("survivors", "match"),
    [([1, 2, 3, 4], "dropped although"), ([0, 1, 2, 3, 4, 9], "outside the cohort")],
)
def test_client_refuses_to_sign_a_wrong_survivor_set(survivors, match):
    _, clients, messages = _unmask_setup()
    forged = reframe(messages[0], msg.encode_ids(survivors))
    with pytest.raises(ProtocolError, match=match):
        clients[0].handle(forged)
    with pytest.raises(ProtocolError, match="aborted"):
        clients[0].handle(messages[0])  # no second chance after a refusal


def test_client_unmasks_only_the_survivor_set_it_signed():
    _, clients, messages = _unmask_setup(4)
    survivors, sigs, tags = msg.decode_unmask(payload_of(messages[0]))
    other = reframe(
        messages[0],
        msg.encode_unmask(survivors[:-1], sorted(sigs.items()), sorted(tags.items())),
    )
    with pytest.raises(ProtocolError, match="another survivor set"):
        clients[0].handle(other)


def test_client_unmasks_only_with_t_signatures_of_each_peers_holders():
    server, clients, messages = _unmask_setup(4)
    survivors, sigs, _ = msg.decode_unmask(payload_of(messages[1]))  # signatures only, no tags
    t = server._params.graph.threshold
    few = sorted(sigs.items())[: t - 1]
    with pytest.raises(DropoutError, match="signed the survivor set"):
        clients[1].handle(reframe(messages[1], msg.encode_unmask(survivors, few)))
    forged = dict(sigs)
    forged[2] = bytes(64)  # a signature the server made up
    _, clients, messages = _unmask_setup(4)
    with pytest.raises(ProtocolError, match="does not verify"):
        clients[1].handle(
            reframe(messages[1], msg.encode_unmask(survivors, sorted(forged.items())))
        )


def _endorsements(clients, messages, who=1):
    survivors, sigs, tags = msg.decode_unmask(payload_of(messages[who]))
    statement = survivor_statement(clients[who]._sid, survivors)
    return survivors, sigs, tags, statement


def test_neighbour_tags_stand_for_signatures_and_save_every_verification(monkeypatch):
    # secagg's complete graph: every signer is a neighbour, so no Ed25519 verification at all.
    _, clients, messages = _unmask_setup(4)
    _, _, tags, _ = _endorsements(clients, messages)
    assert set(tags) == {0, 2, 3, 4}
    calls = []
    original = Roster.verify
    monkeypatch.setattr(Roster, "verify", lambda *a: calls.append(a) or original(*a))
    shares = msg.decode_reveal(payload_of(clients[1].handle(messages[1])))
    assert set(shares) == {0, 1, 2, 3, 4} and calls == []


@pytest.mark.parametrize("forge", ["made up", "reflected"])
def test_forged_or_reflected_tag_does_not_count_as_an_endorsement(forge):
    _, clients, messages = _unmask_setup(4)
    survivors, _, tags, statement = _endorsements(clients, messages)
    if forge == "made up":
        tags[2] = bytes(msg.ENDORSEMENT_BYTES)
    else:  # client 1's own endorsement to 2, handed back to 1 as 2's
        tags[2] = endorsement_tag(
            clients[1]._endorse[2], sender=1, recipient=2, statement=statement
        )
    request = msg.encode_unmask(survivors, [], sorted(tags.items()))  # no signatures
    with pytest.raises(AuthenticationError, match="endorsement of client 2"):
        clients[1].handle(reframe(messages[1], request))


def test_bad_tag_falls_back_to_the_signature():
    # A client cannot stall its neighbours with a garbage tag: its signature still counts.
    _, clients, messages = _unmask_setup(4)
    survivors, sigs, tags, _ = _endorsements(clients, messages)
    tags[2] = bytes(msg.ENDORSEMENT_BYTES)
    request = msg.encode_unmask(survivors, sorted(sigs.items()), sorted(tags.items()))
    shares = msg.decode_reveal(payload_of(clients[1].handle(reframe(messages[1], request))))
    assert set(shares) == {0, 1, 2, 3, 4}


def test_client_answers_one_unmask_request_only():
    _, clients, messages = _unmask_setup(4)
    clients[2].handle(messages[2])
    with pytest.raises(ProtocolError):
        clients[2].handle(messages[2])


def test_altered_sealed_share_is_rejected():
    _, clients, messages = _unmask_setup(2)
    raw = bytearray(payload_of(messages[0]))
    raw[-5] ^= 1  # inside a sealed share: even the (signing) server cannot alter it
    with pytest.raises(ProtocolError, match="authentication"):
        clients[0].handle(reframe(messages[0], bytes(raw)))


def test_misrouted_sealed_share_is_rejected():
    _, clients, messages = _unmask_setup(2)
    # Deliver client 1's share list to client 0 under client 0's header.
    body = payload_of(messages[1])
    contribute, rows = msg.decode_share_delivery(body)
    rows = {0 if s == 1 else s: blob for s, blob in rows.items()}
    forged = reframe(messages[0], msg.encode_share_delivery(contribute, sorted(rows.items())))
    with pytest.raises(ProtocolError):
        clients[0].handle(forged)


def test_altered_revealed_share_is_detected():
    server, clients, messages = _unmask_setup(4)
    replies = {c: clients[c].handle(m) for c, m in messages.items()}
    body = payload_of(replies[0])
    shares = msg.decode_reveal(body)
    rows = [(p, k, (v + 1) % 2**256) for p, (k, v) in sorted(shares.items())]
    replies[0] = reframe(replies[0], msg.encode_reveal(rows))
    with pytest.raises(ProtocolError, match="commitment"):
        server.advance(replies)
