#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/.

Run from anywhere: python3 fuzz/seeds.py. It is deterministic; rerun it after
a change of the entry/snapshot format, of the guest ABI or of the webhook's
golden AdmissionReviews, and commit the result. The example guests are copied
from wasm-examples/target (build them first: `cargo build -p dorado` does).
"""

import json
import os
import struct
import sys

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)


def write(target, name, data):
    d = os.path.join(FUZZ, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- runtime/core/src/entry.rs formats (big-endian) -------------------------

def u16(n): return struct.pack(">H", n)
def u32(n): return struct.pack(">I", n)
def u64(n): return struct.pack(">Q", n)


def command(client, payload):
    if client is None:
        head = u16(0) + u64(0)
    else:
        cid, seq = client
        head = u16(len(cid)) + cid.encode() + u64(seq)
    return head + u32(len(payload)) + payload


def batch(commands):
    return b"DE\x01\x01" + u32(len(commands)) + b"".join(commands)


def lz4_block(data):
    """A greedy LZ4 block-format compressor (what version-2 entries hold).
    Any valid LZ4 block decodes; it need not be lz4_flex's own output."""
    out = bytearray()

    def length(v):
        while v >= 255:
            out.append(255)
            v -= 255
        out.append(v)

    def literals(lit, match_nibble):
        out.append((min(len(lit), 15) << 4) | match_nibble)
        if len(lit) >= 15:
            length(len(lit) - 15)
        out.extend(lit)

    n, i, anchor, seen = len(data), 0, 0, {}
    # The last 5 bytes are literals; the last match starts 12 bytes before the end.
    while i < n - 12:
        key = data[i:i + 4]
        cand = seen.get(key)
        seen[key] = i
        if cand is None or i - cand > 65535:
            i += 1
            continue
        m = 4
        while i + m < n - 5 and data[cand + m] == data[i + m]:
            m += 1
        literals(data[anchor:i], min(m - 4, 15))
        out.extend(struct.pack("<H", i - cand))
        if m - 4 >= 15:
            length(m - 4 - 15)
        i += m
        anchor = i
    literals(data[anchor:], 0)
    return bytes(out)


def compressed(entry):
    """The version-2 form of a version-1 entry."""
    return b"DE\x02\x01" + u32(len(entry)) + lz4_block(entry)


def snapshot(index, hash_, sha, sessions, state, keep_order=False):
    out = b"DS\x01" + u64(index) + hash_ + u16(len(sha)) + sha.encode()
    out += u32(len(sessions))
    for sid, seq, last, outcome in (sessions if keep_order else sorted(sessions)):
        out += u16(len(sid)) + sid.encode() + u64(seq) + u64(last)
        tag, body = outcome
        out += bytes([tag]) + u32(len(body)) + body
    return out + u64(len(state)) + state


def entries():
    put = b'{"op":"put","key":"a","value":1}'
    write("entry_decode", "noop", b"DE\x01\x00")
    write("entry_decode", "empty-batch", batch([]))
    write("entry_decode", "batch-two", batch([command(("c1", 7), put), command(None, b"")]))
    write("entry_decode", "batch-long-id", batch([command(("x" * 255, 2**64 - 1), put)]))
    # Past crash (docs/fuzzing.md): a 256-byte client id.
    write("entry_decode", "crash-id-256-bytes", batch([command(("x" * 256, 1), b"")]))
    write("entry_decode", "batch-three", batch([
        command(("web-1", 1), put),
        command(("web-1", 2), b'{"op":"get","key":"a"}'),
        command(("web-2", 1), b'{"op":"delete","key":"a"}'),
    ]))
    # Version 2: compressed batches (above 256 bytes uncompressed).
    puts = [command(("bench-c%d" % i, 1000 + i),
                    b'{"op":"put","key":"k%08d","value":"%s"}' % (i, b"x" * 58))
            for i in range(8)]
    write("entry_decode", "v2-batch-eight", compressed(batch(puts)))
    write("entry_decode", "v2-batch-mixed", compressed(batch([
        command(None, b"free text " * 30),
        command(("web-1", 3), put * 4),
    ])))
    # Hostile: a length no replica may allocate; a stream shorter than declared.
    write("entry_decode", "v2-huge-length", b"DE\x02\x01\xff\xff\xff\xff" + bytes(8))
    eight = batch(puts)
    write("entry_decode", "v2-short-stream", b"DE\x02\x01" + u32(len(eight) + 1) + lz4_block(eight))


def snapshots():
    write("snapshot_decode", "empty", snapshot(0, bytes(32), "", [], b""))
    write("snapshot_decode", "kv-two-sessions", snapshot(
        42, bytes([7]) * 32, "ab" * 32,
        [("a", 3, 9, (0, b'{"ok":true}')), ("b", 1, 2, (1, b"trap: guest panicked"))],
        b'{"a":1,"b":"x"}'))
    # Past crashes (docs/fuzzing.md): sessions out of id order, and repeated.
    write("snapshot_decode", "crash-sessions-unordered", snapshot(
        1, bytes(32), "", [("b", 1, 1, (0, b"")), ("a", 1, 1, (0, b""))], b"", keep_order=True))
    write("snapshot_decode", "crash-sessions-repeated", snapshot(
        1, bytes(32), "", [("a", 1, 1, (0, b"")), ("a", 2, 1, (0, b""))], b"", keep_order=True))


# --- HTTP ---------------------------------------------------------------------

def headers():
    seeds = {
        "none": "content-type: application/json\r\n\r\n",
        "both": "dorado-client-id: web-1\r\ndorado-seq: 7\r\n\r\n",
        "only-id": "dorado-client-id: web-1\r\n\r\n",
        "zero-seq": "dorado-client-id: a\r\ndorado-seq: 0\r\n\r\n",
        "repeated": "dorado-client-id: a\r\ndorado-client-id: b\r\ndorado-seq: 18446744073709551615\r\n\r\n",
        "spaces": "dorado-client-id: has space\r\ndorado-seq:  3 \r\n\r\n",
    }
    for name, text in seeds.items():
        write("client_tag", name, text)


def requests():
    seeds = {
        "command": "POST /v1/commands HTTP/1.1\r\nhost: r0\r\ndorado-client-id: web-1\r\ndorado-seq: 1\r\n"
                   "content-type: application/json\r\n\r\n{\"op\":\"put\",\"key\":\"a\",\"value\":1}",
        "command-empty": "POST /v1/commands HTTP/1.1\r\n\r\n",
        "command-too-large": "POST /v1/commands HTTP/1.1\r\ncontent-length: 80\r\n\r\n" + "0123456789" * 8,
        "command-bad-seq": "POST /v1/commands HTTP/1.1\r\ndorado-client-id: a\r\ndorado-seq: -1\r\n\r\nx",
        "query-stale": "POST /v1/query?consistency=stale HTTP/1.1\r\n\r\n{\"op\":\"get\",\"key\":\"a\"}",
        "query-bad-consistency": "POST /v1/query?consistency=eventual HTTP/1.1\r\n\r\n{}",
        # Past finding (docs/fuzzing.md): axum's plain-text rejection.
        "crash-query-repeated-param": "POST /v1/query?consistency=a&consistency=b HTTP/1.1\r\n\r\n{}",
        "status": "GET /v1/status HTTP/1.1\r\nhost: r0\r\n\r\n",
        "snapshot": "GET /v1/snapshot HTTP/1.1\r\n\r\n",
        "healthz": "GET /healthz HTTP/1.1\r\n\r\n",
        "readyz-head": "HEAD /readyz HTTP/1.1\r\n\r\n",
        "metrics": "GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text\r\n\r\n",
        "wrong-method": "DELETE /v1/commands HTTP/1.1\r\n\r\n",
        "not-found": "GET /v2/metrics?x=%zz HTTP/1.1\r\n\r\n",
    }
    for name, text in seeds.items():
        write("api_router", name, text)


# --- wasm ---------------------------------------------------------------------

def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def sleb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def vec(items): return leb(len(items)) + b"".join(items)
def name(s): return leb(len(s)) + s.encode()
def section(sid, body): return bytes([sid]) + leb(len(body)) + body


I32, I64 = 0x7F, 0x7E
TYPES = [((), (I32,)), ((I32,), (I32,)), ((I32, I32), (I64,)), ((), (I64,)), ((I32, I32), (I32,))]
ECHO = bytes([0x20, 0, 0xAD, 0x42, 32, 0x86, 0x20, 1, 0xAD, 0x84])  # (ptr << 32) | len


def guest(abi=1, imports=False, unreachable=False):
    """Echo guest: replies are the input; abi is what dorado_abi_version returns."""
    types = vec([b"\x60" + vec([bytes([p]) for p in ps]) + vec([bytes([r]) for r in rs])
                 for ps, rs in TYPES])
    funcs = [("dorado_abi_version", 0, b"\x41" + sleb(abi)),
             ("dorado_alloc", 1, b"\x41" + sleb(1024)),
             ("dorado_apply", 2, ECHO),
             ("dorado_query", 2, ECHO),
             ("dorado_snapshot", 3, b"\x42\x00"),
             ("dorado_restore", 4, b"\x41\x00")]
    base = 1 if imports else 0
    out = b"\0asm\x01\0\0\0" + section(1, types)
    if imports:
        out += section(2, vec([name("env") + name("now") + b"\x00" + leb(3)]))
    out += section(3, vec([leb(t) for _, t, _ in funcs]))
    out += section(5, vec([b"\x01" + leb(1) + leb(16)]))
    exports = [name(n) + b"\x00" + leb(base + i) for i, (n, _, _) in enumerate(funcs)]
    exports.append(name("memory") + b"\x02\x00")
    out += section(7, vec(exports))
    bodies = []
    for _, _, code in funcs:
        code = b"\x00" if unreachable else code
        body = b"\x00" + code + b"\x0b"  # no locals
        bodies.append(leb(len(body)) + body)
    return out + section(10, vec(bodies))


def modules():
    wasm_dir = os.path.join(ROOT, "wasm-examples/target/wasm32-unknown-unknown/release")
    for ex in ["kv", "bank", "counter", "faulty"]:
        path = os.path.join(wasm_dir, ex + ".wasm")
        if not os.path.exists(path):
            sys.exit(f"{path} missing: build the guests first (cargo build -p dorado)")
        with open(path, "rb") as f:
            write("host_load", ex + ".wasm", f.read())
    write("host_load", "echo.wasm", guest())
    write("host_load", "abi-version-2.wasm", guest(abi=2))
    write("host_load", "imports-env.wasm", guest(imports=True))
    write("host_load", "all-unreachable.wasm", guest(unreachable=True))
    write("host_load", "empty-module.wasm", b"\0asm\x01\0\0\0")


def smith():
    """wasm-smith reads any bytes: fixed xorshift blobs of a few sizes."""
    x = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for i, n in enumerate([64, 256, 1024, 4096]):
        out = bytearray()
        for _ in range(n):
            x ^= (x << 13) & mask
            x ^= x >> 7
            x ^= (x << 17) & mask
            out.append((x >> 24) & 0xFF)
        write("host_smith", f"random-{i}-{n}", bytes(out))


def scripts():
    seeds = {
        "kv": 'kv\napply {"op":"put","key":"a","value":1}\napply {"op":"cas","key":"a","expected":1,"value":2}\n'
              'query {"op":"get","key":"a"}\nsnapshot\napply {"op":"delete","key":"a"}\nquery {"op":"len"}\nrestore-own\n',
        "bank": 'bank\napply {"op":"open","account":"a","balance":100}\napply {"op":"open","account":"b","balance":0}\n'
                'apply {"op":"transfer","from":"a","to":"b","amount":30}\n'
                'apply {"op":"transfer","from":"b","to":"a","amount":1000}\nquery {"op":"total"}\nrestore {"a":1}\nsnapshot\n',
        "counter": 'counter\napply {"op":"add","n":5}\napply {"op":"add","n":9223372036854775807}\n'
                   'apply {"op":"add","n":-5}\nquery {"op":"get"}\nrestore garbage\n',
        "faulty-rollback": 'faulty\napply {"op":"set","value":1}\napply {"op":"panic","set":2}\n'
                           'apply {"op":"loop","set":3}\napply {"op":"alloc","set":4}\napply {"op":"recurse","set":5}\n'
                           'query {"op":"get"}\nsnapshot\n',
        "faulty-queries": 'faulty\napply {"op":"set","value":"x"}\nquery {"op":"panic"}\nquery {"op":"loop"}\n'
                          'apply {"op":"alloc","mb":4,"set":[1,2]}\nrestore-own\n',
    }
    for n, text in seeds.items():
        write("host_examples", n, text)
    write("host_examples", "generated",
          b"kv\napply* \x00\x01\x02\x03\x04\x05\x06\x07\napply* \x03\x02\x01\nquery* \x01\x00\napply \xff\xfe\nsnapshot\n")


def admission_reviews():
    golden = os.path.join(ROOT, "webhook/tests/golden")
    for f in sorted(os.listdir(golden)):
        if not f.endswith(".request.json"):
            continue
        case = f[: -len(".request.json")]
        with open(os.path.join(golden, f), "rb") as fh:
            data = fh.read()
        write("webhook_review", case + ".json", data)
        pod = json.loads(data).get("request", {}).get("object")
        if isinstance(pod, dict):
            write("webhook_mutate", case + ".json", json.dumps(pod, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    entries()
    snapshots()
    headers()
    requests()
    modules()
    smith()
    scripts()
    admission_reviews()
