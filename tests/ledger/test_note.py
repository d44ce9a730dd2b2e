"""Signed notes, keys, checkpoints and cosignatures (C2SP formats)."""

from __future__ import annotations

import pytest

from incisive_lab.ledger import (
    SIG_COSIGNATURE,
    Checkpoint,
    Cosignature,
    NoteError,
    SignerKey,
    VerifierKey,
)
from incisive_lab.ledger._note import cosign, format_note, parse_note, sign_note

# Known-answer vector published with the reference implementation of the note format
# (golang.org/x/mod/sumdb/note, package documentation "Example"): the public key, the text
# and the signed note. Ed25519 signatures are deterministic, so checking this signature
# with our key parsing, key ids and note framing pins the format byte for byte.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_NOTE = GO_TEXT + "\n" + ("\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGU"
                            "gYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")

# The example checkpoint of the C2SP tlog-checkpoint specification (parsing only).
C2SP_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/"
    "Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrD"
    "JsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n")


def test_reference_note_signature_byte_for_byte() -> None:
    key = VerifierKey.parse(GO_VKEY)
    assert (key.name, key.key_id.hex(), str(key)) == ("PeterNeumann", "c74f20a3", GO_VKEY)
    text, sigs = parse_note(GO_NOTE)
    assert text == GO_TEXT and len(sigs) == 1
    assert sigs[0].matches(key) and key.verify(text.encode(), sigs[0].signature)
    assert not key.verify(text.replace("answer", "ANSWER").encode(), sigs[0].signature)
    assert format_note(text, sigs) == GO_NOTE  # framing round-trips exactly


def test_signer_keys_round_trip_and_sign_deterministically() -> None:
    signer = SignerKey.generate("hospital-a.example/ledger")
    again = SignerKey.parse(signer.to_text())
    assert again.verifier == signer.verifier
    assert sign_note(GO_TEXT, signer) == sign_note(GO_TEXT, again)  # Ed25519 is deterministic
    assert signer.verifier.verify(GO_TEXT.encode(), sign_note(GO_TEXT, signer).signature)
    assert "PRIVATE" not in repr(signer)


def test_malformed_keys_and_notes_are_refused() -> None:
    for bad in ["PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # id
                "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",   # length
                "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space
                "PeterNeumann+c74f20a3", ""]:
        with pytest.raises(NoteError):
            VerifierKey.parse(bad)
    for bad in [GO_TEXT, GO_NOTE[:-1], GO_NOTE.replace("\u2014", "-"),
                GO_NOTE.replace("x08go", "x08g!"), GO_TEXT + "\n", GO_NOTE.replace("\n", "\t", 1)]:
        with pytest.raises(NoteError):
            parse_note(bad)


def test_checkpoint_round_trip_sign_and_verify() -> None:
    signer = SignerKey.generate("hospital-a.example/ledger")
    cp = Checkpoint("hospital-a.example/ledger", 5, bytes(range(32))).signed(signer)
    text = str(cp)
    assert text.startswith("hospital-a.example/ledger\n5\n")
    parsed = Checkpoint.parse(text)
    assert parsed == cp
    parsed.verify(signer.verifier)
    other = SignerKey.generate("hospital-a.example/ledger")
    with pytest.raises(NoteError, match="not signed by"):
        parsed.verify(other.verifier)
    forged = Checkpoint.parse(text.replace("\n5\n", "\n6\n"))
    with pytest.raises(NoteError, match="does not verify"):
        forged.verify(signer.verifier)
    with pytest.raises(NoteError, match="cannot sign"):
        Checkpoint("other.example/log", 1, bytes(32)).signed(signer)


def test_checkpoint_parser_follows_the_spec() -> None:
    cp = Checkpoint.parse(C2SP_CHECKPOINT)
    assert (cp.origin, cp.size, len(cp.signatures)) == ("example.com/behind-the-sofa", 20852163, 2)
    assert str(cp) == C2SP_CHECKPOINT
    cos = Cosignature.from_note_signature(cp.signatures[1])
    assert cos.name == "witness.example.com/w1" and cos.timestamp > 1_600_000_000
    for bad in [C2SP_CHECKPOINT.replace("20852163", "020852163"),
                C2SP_CHECKPOINT.replace("20852163", "-1"),
                C2SP_CHECKPOINT.replace("CsUY", "!sUY"),
                "example.com/x\n1\n\n\u2014 x AAAA\n"]:
        with pytest.raises(NoteError):
            Checkpoint.parse(bad)


def test_cosignature_sign_verify_and_format() -> None:
    log = SignerKey.generate("a.example/log")
    witness = SignerKey.generate("b.example/witness", SIG_COSIGNATURE)
    cp = Checkpoint("a.example/log", 3, bytes(32)).signed(log)
    cos = cosign(cp.body, witness, timestamp=1_700_000_000)
    assert Cosignature.parse(cos.line) == cos
    cos.verify(cp.body, witness.verifier)
    with pytest.raises(NoteError):
        cos.verify(cp.body.replace("\n3\n", "\n4\n"), witness.verifier)
    cosigned = cp.with_signature(cos)
    got = Checkpoint.parse(str(cosigned)).verify_witnessed(log.verifier, [witness.verifier], 1)
    assert [c.timestamp for c in got] == [1_700_000_000]
    with pytest.raises(NoteError, match="1 valid cosignature"):
        cosigned.verify_witnessed(log.verifier, [witness.verifier], 2)
    with pytest.raises(NoteError):  # a log key cannot cosign, a witness key cannot sign notes
        cosign(cp.body, log)
    with pytest.raises(NoteError):
        sign_note(cp.body, witness)
