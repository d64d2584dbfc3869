#!/usr/bin/env python3
"""Minimal iSCSI reader/writer over libiscsi (ctypes), for tests and benches.

  iscsi_rw.py write URL OFFSET < data        write stdin at byte OFFSET
  iscsi_rw.py read  URL OFFSET LEN > data    read LEN bytes at byte OFFSET
  iscsi_rw.py sync  URL                      SYNCHRONIZE CACHE(10) of the whole LUN
  iscsi_rw.py bench URL read|write|randread|randwrite BS QD SECONDS
                                             prints "<ios> <seconds> <iops> <MB/s>"

URL is iscsi://HOST:PORT/TARGET-IQN/LUN; offsets and lengths are multiples of
the 512-byte block. Exit status 1 with a message on any SCSI or iSCSI error.
"""
import ctypes as C, os, random, select, sys, time

BLOCK = 512
L = C.CDLL("libiscsi.so.7")
P, U64, U32, I = C.c_void_p, C.c_uint64, C.c_uint32, C.c_int
CB = C.CFUNCTYPE(None, P, I, P, P)  # iscsi_command_cb(iscsi, status, task, private)
for name, res, args in [
    ("iscsi_create_context", P, [C.c_char_p]),
    ("iscsi_set_targetname", I, [P, C.c_char_p]),
    ("iscsi_set_session_type", I, [P, I]),
    ("iscsi_set_header_digest", I, [P, I]),
    ("iscsi_full_connect_sync", I, [P, C.c_char_p, I]),
    ("iscsi_get_error", C.c_char_p, [P]),
    ("iscsi_write16_sync", P, [P, I, U64, P, U32, I, I, I, I, I, I]),
    ("iscsi_write16_task", P, [P, I, U64, P, U32, I, I, I, I, I, I, CB, P]),
    ("iscsi_synchronizecache10_sync", P, [P, I, I, I, I, I]),
    ("scsi_cdb_read16", P, [U64, U32, I, I, I, I, I, I]),
    ("scsi_task_add_data_in_buffer", I, [P, I, P]),
    ("iscsi_scsi_command_sync", P, [P, I, P, P]),
    ("iscsi_scsi_command_async", I, [P, I, P, CB, P, P]),
    ("scsi_free_scsi_task", None, [P]),
    ("iscsi_get_fd", I, [P]),
    ("iscsi_which_events", I, [P]),
    ("iscsi_service", I, [P, I]),
    ("iscsi_logout_sync", I, [P]),
    ("iscsi_destroy_context", None, [P]),
]:
    f = getattr(L, name)
    f.restype, f.argtypes = res, args


def die(msg):
    sys.exit(f"iscsi_rw: {msg}")


def connect(url):
    if not url.startswith("iscsi://"):
        die(f"bad url {url}")
    portal, target, lun = url[8:].split("/")
    ctx = L.iscsi_create_context(b"iqn.2026-11.test:iscsi-rw")
    L.iscsi_set_targetname(ctx, target.encode())
    L.iscsi_set_session_type(ctx, 2)  # ISCSI_SESSION_NORMAL
    L.iscsi_set_header_digest(ctx, 0)  # ISCSI_HEADER_DIGEST_NONE
    if L.iscsi_full_connect_sync(ctx, portal.encode(), int(lun)) != 0:
        die(f"connect {url}: {L.iscsi_get_error(ctx).decode()}")
    return ctx, int(lun)


def check(ctx, task, what):
    # `int status` is the first field of struct scsi_task (0 = GOOD).
    if not task or C.cast(task, C.POINTER(C.c_int))[0] != 0:
        die(f"{what}: {L.iscsi_get_error(ctx).decode()}")
    L.scsi_free_scsi_task(task)


def read_task(off, buf, n):
    t = L.scsi_cdb_read16(off // BLOCK, n, BLOCK, 0, 0, 0, 0, 0)
    L.scsi_task_add_data_in_buffer(t, n, buf)
    return t


def bench(ctx, lun, mode, bs, qd, secs):
    # Spread over the LUN's first GiB (or what the caller wrote), bs-aligned.
    span = int(os.environ.get("ISCSI_RW_SPAN", 1 << 30)) // bs
    bufs = [C.create_string_buffer(os.urandom(bs), bs) for _ in range(qd)]
    state = {"next": 0, "done": 0, "err": None, "inflight": 0}
    rnd = random.Random(1)

    def submit(slot):
        if mode.startswith("rand"):
            blk = rnd.randrange(span)
        else:
            blk = state["next"] % span
            state["next"] += 1
        off = blk * bs
        if mode.endswith("write"):
            t = L.iscsi_write16_task(ctx, lun, off // BLOCK, bufs[slot], bs, BLOCK,
                                     0, 0, 0, 0, 0, cb, slot)
            ok = t is not None
        else:
            ok = L.iscsi_scsi_command_async(ctx, lun, read_task(off, bufs[slot], bs),
                                            cb, None, slot) == 0
        if not ok:
            die(f"submit: {L.iscsi_get_error(ctx).decode()}")
        state["inflight"] += 1

    @CB
    def cb(_ctx, status, task, slot):
        state["inflight"] -= 1
        if status != 0:
            state["err"] = L.iscsi_get_error(ctx).decode() or f"status {status}"
        L.scsi_free_scsi_task(task)
        state["done"] += 1
        if time.monotonic() < end:
            submit(slot or 0)

    fd = L.iscsi_get_fd(ctx)
    poll = select.poll()
    start = time.monotonic()
    end = start + secs
    for s in range(qd):
        submit(s)
    while state["inflight"] and not state["err"]:
        ev = L.iscsi_which_events(ctx)
        poll.register(fd, ev)
        for _, rev in poll.poll(1000):
            if L.iscsi_service(ctx, rev) < 0:
                die(f"service: {L.iscsi_get_error(ctx).decode()}")
    if state["err"]:
        die(f"{mode}: {state['err']}")
    el = time.monotonic() - start
    n = state["done"]
    print(f"{n} {el:.3f} {n / el:.0f} {n * bs / el / 1e6:.1f}")


def main():
    a = sys.argv[1:]
    if len(a) < 2:
        die(__doc__)
    ctx, lun = connect(a[1])
    if a[0] == "write" and len(a) == 3:
        data = sys.stdin.buffer.read()
        chunk = 1 << 20
        for i in range(0, len(data), chunk):
            piece = data[i:i + chunk]
            t = L.iscsi_write16_sync(ctx, lun, (int(a[2]) + i) // BLOCK, piece, len(piece),
                                     BLOCK, 0, 0, 0, 0, 0)
            check(ctx, t, f"write16 at {int(a[2]) + i}")
    elif a[0] == "read" and len(a) == 4:
        off, n = int(a[2]), int(a[3])
        out = sys.stdout.buffer
        for i in range(0, n, 1 << 20):
            k = min(1 << 20, n - i)
            buf = C.create_string_buffer(k)
            t = L.iscsi_scsi_command_sync(ctx, lun, read_task(off + i, buf, k), None)
            check(ctx, t, f"read16 at {off + i}")
            out.write(buf.raw)
        out.flush()
    elif a[0] == "sync" and len(a) == 2:
        check(ctx, L.iscsi_synchronizecache10_sync(ctx, lun, 0, 0, 0, 0), "synchronize cache")
    elif a[0] == "bench" and len(a) == 6:
        bench(ctx, lun, a[2], int(a[3]), int(a[4]), float(a[5]))
    else:
        die(__doc__)
    L.iscsi_logout_sync(ctx)
    L.iscsi_destroy_context(ctx)


main()
