"""The published protocol v2 test vectors (docs/protocol/vectors/) are up to date, and two independent phones pass them.

A phone maker implements docs/lock-pipeline.md and runs these vectors; so do we, twice: with the Java
program (conformance/java/Conformance.java, which knows nothing of Python) and with the reference agent's
phone model (devices.agent.phone.Phone). A vector that a tampered signature or payload still passes would
prove nothing, so every signed vector is also run tampered, and Java must fail it.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "docs" / "protocol" / "vectors"
JAVA_PROGRAM = ROOT / "conformance" / "java" / "Conformance.java"
#: Verdicts a phone reaches only after the signature verified: a changed byte must turn them into bad_signature.
VERIFIED = ("apply", "same", "stale", "other_device", "released_final", "wrong_kind")


def _cases() -> list[dict]:
    cases = [json.loads(path.read_text("utf-8")) for path in sorted(VECTORS.glob("*.json"))]
    return [case for case in cases if "steps" in case]


def _java(directory: Path) -> subprocess.CompletedProcess:
    java = shutil.which("java")
    if java is None:
        pytest.skip("java is not installed (apt-get install openjdk-17-jdk-headless): the Java phone cannot run")
    return subprocess.run(
        [java, str(JAVA_PROGRAM), str(directory)], capture_output=True, text=True, timeout=120, check=False
    )


def _lines(output: str) -> dict[str, str]:
    """Java's verdict per case: ``{name: "PASS" | "FAIL ..."}``."""
    found = {}
    for line in output.splitlines():
        word, _sep, rest = line.partition(" ")
        if word in ("PASS", "FAIL"):
            name, _colon, why = rest.partition(":")
            found[name] = f"{word}{':' + why if why else ''}"
    return found


def test_the_published_vectors_are_what_the_generator_writes():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "protocol_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert len(_cases()) >= 35


def test_the_java_phone_passes_every_vector():
    result = _java(VECTORS)

    verdicts = _lines(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts == {case["name"]: "PASS" for case in _cases()}


def _tampered(envelope: dict | str, member: str) -> dict | str:
    """The envelope (object or text) with one byte of its payload or signature changed (still valid base64)."""
    original = (json.loads(envelope) if isinstance(envelope, str) else envelope)[member]
    raw = bytearray(base64.b64decode(original))
    raw[len(raw) // 2] ^= 0x01
    changed = base64.b64encode(bytes(raw)).decode("ascii")
    if isinstance(envelope, str):  # same length: the text keeps its size
        return envelope.replace(original, changed, 1)
    return {**envelope, member: changed}


def _signed(envelope: object) -> bool:
    if isinstance(envelope, str):
        try:
            envelope = json.loads(envelope)
        except ValueError:
            return False
    return isinstance(envelope, dict) and isinstance(envelope.get("payload"), str)


def test_the_java_phone_fails_every_signed_vector_once_one_byte_is_changed(tmp_path):
    expected = {}
    for case in _cases():
        taken = [
            index
            for index, step in enumerate(case["steps"])
            if _signed(step["input"].get("envelope")) and step["expect"]["verdict"] in VERIFIED
        ]
        for member in ("payload", "signature"):
            mutated = copy.deepcopy(case)
            mutated["name"] = f"{case['name']}~{member}"
            step = mutated["steps"][taken[0]]["input"]
            step["envelope"] = _tampered(step["envelope"], member)
            (tmp_path / f"{mutated['name']}.json").write_text(json.dumps(mutated), "utf-8")
            expected[mutated["name"]] = "FAIL"

    result = _java(tmp_path)

    outcomes = _lines(result.stdout)
    assert result.returncode == 1
    assert {name: outcome.split(":")[0] for name, outcome in outcomes.items()} == expected, result.stdout
    assert all("got bad_signature" in outcome for outcome in outcomes.values()), result.stdout


def _run_with_phone_model(case: dict) -> list[str]:
    """Run one vector through devices.agent.phone.Phone; the differences from its expectations."""
    from devices.agent.phone import Phone

    start = case["phone"]
    in_force = start["in_force"]
    phone = Phone(
        device=start["device"],
        imeis=start["imeis"],
        trusted_keys=start["trusted_keys"],
        key_statement_seq=start["key_statement_seq"],
        last_seq=start["last_seq"],
        in_force=base64.b64decode(in_force["payload"]) if in_force else None,
        pinned_keys=start["pinned_keys"],
    )
    # The phone is built holding its command in force, anchored at monotonic 0 (as the Java phone
    # anchors it at the harness's start): trusted time starts at that command's issued_at.
    clock = applied_at = 0.0
    problems = []
    for number, step in enumerate(case["steps"], start=1):
        given, expect = step["input"], step["expect"]
        envelope = given.get("envelope")
        if isinstance(envelope, str):
            envelope = envelope.encode("utf-8")  # text as it arrives: its bytes count for the size limit
        if given["type"] == "command":
            verdict = phone.receive_command(envelope, monotonic=clock)
            applied_at = clock if verdict == "apply" else applied_at
            got = {"verdict": verdict, "state": phone.state, "last_seq": phone.last_seq}
        elif given["type"] == "key_statement":
            got = {"verdict": phone.receive_key_statement(envelope), "trusted_key_ids": phone.trusted_key_ids}
        else:
            if given["type"] == "time":
                clock = applied_at + given["monotonic_elapsed_seconds"]
            else:
                phone.offline_code(days=given["days"], monotonic=clock)
            shows, warning = phone.shows(monotonic=clock)
            got = {"shows": shows, "warning": warning}
        wanted = {key: value for key, value in expect.items() if key in got}
        if {key: got[key] for key in wanted} != wanted:
            problems.append(f"step {number} ({given['type']}): expected {wanted}, got {got}")
    return problems


@pytest.mark.parametrize("case", _cases(), ids=lambda case: case["name"])
def test_the_reference_phone_model_passes_the_vector(case):
    assert _run_with_phone_model(case) == []
