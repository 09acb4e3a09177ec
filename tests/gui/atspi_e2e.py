#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""End-to-end accessibility test of the together desktop app, driven only through AT-SPI.

It sees the app the way a screen reader (or any outside driver) does: through the accessibility bus, by
accessible names, roles, states and the Action / Value / Text / EditableText / Component interfaces, with
no knowledge of Qt internals. Run it under its own X server and session bus (tests/gui/run_atspi_e2e.sh):

  xvfb-run -a -s "-screen 0 1280x800x24" dbus-run-session -- \\
      python3 tests/gui/atspi_e2e.py --bin BUILD/bin --model MODELDIR

MODELDIR is a reference model folder (hf/ and reference.json), e.g. ../shared/refmodels/stories260K.
The app runs as `BIN/together --model MODEL/hf --local-workers 2 --dtype f32`: its workers are daemons on
this machine, found on loopback only (no broadcast), so nothing leaves the machine. Its settings, state,
caches and hub cache live in a fresh temporary folder.

Exit status: 0 passed, 1 failed, 77 skipped (something the test needs is absent), 75 the X display could
not be opened by the test or the app (the wrapper retries with a fresh Xvfb: two xvfb-run -a starting at
once can pick the same display number).
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

EXIT_SKIP = 77
EXIT_NO_DISPLAY = 75

# Imported by import_pyatspi() once the X display is held (see hold_display): the import starts the accessibility bus.
pyatspi = None
Atspi = None


def import_pyatspi():
    global pyatspi, Atspi
    try:
        import pyatspi as _pyatspi
        from gi.repository import Atspi as _Atspi
    except Exception as e:  # noqa: BLE001 - any import problem means "cannot run here"
        print(f"SKIP: python3-pyatspi is not importable by {sys.executable}: {e}", flush=True)
        sys.exit(EXIT_SKIP)
    pyatspi, Atspi = _pyatspi, _Atspi


class Failure(Exception):
    pass


class NoDisplay(Failure):
    """The app could not connect to the X server: the wrapper starts a fresh one and tries again."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# AT-SPI helpers (every read goes to the bus: the app's cache mask is NONE, see find_app)

def role(obj):
    try:
        return obj.getRoleName()
    except Exception:  # noqa: BLE001
        return "?"


def states(obj):
    try:
        return obj.getState()
    except Exception:  # noqa: BLE001
        return None


def has_state(obj, state):
    s = states(obj)
    return s is not None and s.contains(state)


def enabled(obj):
    return has_state(obj, pyatspi.STATE_SENSITIVE) and has_state(obj, pyatspi.STATE_ENABLED)


def interfaces(obj):
    try:
        return set(pyatspi.utils.listInterfaces(obj))
    except Exception:  # noqa: BLE001
        return set()


def children(obj):
    try:
        n = obj.childCount
    except Exception:  # noqa: BLE001
        return []
    out = []
    for i in range(n):
        try:
            c = obj.getChildAtIndex(i)
        except Exception:  # noqa: BLE001
            c = None
        if c is not None:
            out.append(c)
    return out


def walk(root, max_nodes=5000):
    """Breadth-first: a dock comes before the widgets inside it that share its name."""
    queue, seen = [root], 0
    while queue and seen < max_nodes:
        obj = queue.pop(0)
        seen += 1
        yield obj
        queue.extend(children(obj))


def find_all(root, name, roles=None):
    found = []
    for obj in walk(root):
        try:
            if obj.name == name and (roles is None or role(obj) in roles):
                found.append(obj)
        except Exception:  # noqa: BLE001
            pass
    return found


def text_of(obj):
    t = obj.queryText()
    return t.getText(0, -1)


def do_action(obj, names=("Press", "press", "click", "Click", "activate", "Activate")):
    a = obj.queryAction()
    available = [a.getName(i) for i in range(a.nActions)]
    for want in names:
        if want in available:
            if not a.doAction(available.index(want)):
                raise Failure(f"action {want!r} on {obj.name!r} returned false")
            return want
    raise Failure(f"{obj.name!r} ({role(obj)}) has none of the actions {list(names)}; it offers {available}")


def normalize(s):
    """Whitespace-insensitive text: the transcript is rich text, whose paragraph and line breaks reach AT-SPI as
    U+2029 / U+2028 / U+FFFC or plain newlines depending on where they are; NBSP is a space."""
    s = s.replace("\u00a0", " ").replace("\u2028", " ").replace("\u2029", " ").replace("\ufffc", " ")
    return re.sub(r"\s+", " ", s).strip()


# Sanitized builds (ASan + UBSan) run several times slower: ctest sets TOGETHER_TEST_SLOWDOWN there (the factor of
# core/sanitizers.h), and every wait, the budget and ctest's TIMEOUT are stretched by it. Nowhere else.
SLOWDOWN = max(1, int(os.environ.get("TOGETHER_TEST_SLOWDOWN", "1") or "1"))
# The whole run stays within ctest's TIMEOUT (300 s times SLOWDOWN), with room to stop the app and say why: a
# wait is cut short when the budget would run out.
BUDGET = 270 * SLOWDOWN
BUDGET_END = time.monotonic() + BUDGET


def wait_for(what, timeout, predicate, interval=0.5):
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    cut = deadline > BUDGET_END
    deadline = min(deadline, BUDGET_END)
    start = time.monotonic()
    last_exc = None
    while True:
        try:
            r = predicate()
            if r:
                log(f"{what}: after {time.monotonic() - start:.1f} s")
                return r
        except Failure:
            raise
        except Exception as e:  # noqa: BLE001 - objects come and go while the app works
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc})" if last_exc else ""
            if cut:
                raise Failure(f"timed out after {time.monotonic() - start:.0f} s, when the test's {BUDGET} s budget ran "
                              f"out, waiting for: {what}{extra}")
            raise Failure(f"timed out after {timeout} s waiting for: {what}{extra}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------------------
# X helpers (libX11 through ctypes: no extra package)

class XImage(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_int), ("height", ctypes.c_int), ("xoffset", ctypes.c_int), ("format", ctypes.c_int),
        ("data", ctypes.POINTER(ctypes.c_ubyte)), ("byte_order", ctypes.c_int), ("bitmap_unit", ctypes.c_int),
        ("bitmap_bit_order", ctypes.c_int), ("bitmap_pad", ctypes.c_int), ("depth", ctypes.c_int),
        ("bytes_per_line", ctypes.c_int), ("bits_per_pixel", ctypes.c_int), ("red_mask", ctypes.c_ulong),
        ("green_mask", ctypes.c_ulong), ("blue_mask", ctypes.c_ulong),
    ]


def libx11():
    x = ctypes.CDLL("libX11.so.6")
    x.XOpenDisplay.restype = ctypes.c_void_p
    x.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x.XCloseDisplay.argtypes = [ctypes.c_void_p]
    x.XDefaultScreen.argtypes = [ctypes.c_void_p]
    x.XDefaultRootWindow.restype = ctypes.c_ulong
    x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    x.XDisplayWidth.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x.XGetImage.restype = ctypes.POINTER(XImage)
    x.XGetImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_uint,
                            ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]
    return x


_held_display = None


def hold_display():
    """Open the display and keep the connection until we exit. Xvfb resets when its last client disconnects, and
    a client connecting during the reset is refused ("could not connect to display"). at-spi-bus-launcher connects
    to X (for the AT_SPI_BUS root property) and disconnects as the accessibility bus starts, right when the app
    connects: without a connection held open, that race fails the app's start now and then.
    Returns False if the display cannot be opened."""
    global _held_display
    if not os.environ.get("DISPLAY"):
        return False
    try:
        x = libx11()
    except OSError:
        return True  # cannot tell without libX11; let the app try
    _held_display = x.XOpenDisplay(None)
    return bool(_held_display)


def png_bytes(width, height, rgb_rows):
    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(r) for r in rgb_rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def screenshot_xlib(path):
    x = libx11()
    d = x.XOpenDisplay(None)
    if not d:
        raise RuntimeError("cannot open the display")
    try:
        scr = x.XDefaultScreen(d)
        w, h = x.XDisplayWidth(d, scr), x.XDisplayHeight(d, scr)
        img = x.XGetImage(d, x.XDefaultRootWindow(d), 0, 0, w, h, ctypes.c_ulong(-1).value, 2)  # ZPixmap
        if not img:
            raise RuntimeError("XGetImage failed")
        im = img.contents
        if im.bits_per_pixel != 32 or im.byte_order != 0:
            raise RuntimeError(f"unsupported image layout: {im.bits_per_pixel} bits per pixel, byte order {im.byte_order}")
        shift = {0xFF: 0, 0xFF00: 1, 0xFF0000: 2, 0xFF000000: 3}
        ri, gi, bi = shift[im.red_mask], shift[im.green_mask], shift[im.blue_mask]
        data = ctypes.string_at(im.data, im.bytes_per_line * h)
        rows = []
        for y in range(h):
            row = data[y * im.bytes_per_line: y * im.bytes_per_line + 4 * w]
            out = bytearray(3 * w)
            out[0::3], out[1::3], out[2::3] = row[ri::4], row[gi::4], row[bi::4]
            rows.append(out)
        with open(path, "wb") as f:
            f.write(png_bytes(w, h, rows))
        distinct = len(set(bytes(rows[h // 2][i:i + 3]) for i in range(0, 3 * w, 3 * 7)))
        return f"{w}x{h} via libX11 XGetImage ({distinct} distinct colours sampled on the middle row)"
    finally:
        x.XCloseDisplay(d)


def screenshot(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        return screenshot_xlib(path)
    except Exception as e:  # noqa: BLE001
        why = str(e)
    if shutil.which("import"):
        r = subprocess.run(["import", "-window", "root", path], capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return "via ImageMagick import"
        why += f"; import: {r.stderr.strip()}"
    raise RuntimeError(why)


# ---------------------------------------------------------------------------------------------------------
# the app process

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    """The app's worker daemons die with it (PDEATHSIG); should one outlive it anyway, it is re-parented to us
    instead of init, and we end it by its id."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:  # noqa: BLE001
        pass


def our_children():
    me = os.getpid()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            state, ppid = fields[0], int(fields[1])
            if ppid == me:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                out.append((int(pid), state, cmd))
        except (OSError, ValueError):
            pass
    return out


def stop_app(proc):
    if proc is None:
        return
    if proc.poll() is None:
        log(f"stopping the app (SIGTERM to pid {proc.pid})")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log("the app did not exit within 15 s of SIGTERM: SIGKILL")
            proc.kill()
            proc.wait(timeout=15)
    log(f"the app exited with status {proc.returncode}")
    # Worker daemons die with the app (PDEATHSIG) and, as we are a subreaper, become our children: reap them.
    # Any still alive after a grace period gets SIGTERM, then SIGKILL, by its id.
    deadline = time.monotonic() + 10
    term_sent = set()
    while True:
        kids = our_children()
        if not kids:
            break
        for pid, state, cmd in kids:
            if state == "Z":
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
                log(f"reaped orphan {pid} (a process of the app's, ended with it)")
            elif time.monotonic() > deadline - 5 and pid not in term_sent:
                log(f"a process outlived the app, SIGTERM to {pid}: {cmd[:120]}")
                term_sent.add(pid)
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            elif time.monotonic() > deadline:
                log(f"SIGKILL to {pid}: {cmd[:120]}")
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        time.sleep(0.1)


def find_app(pid, timeout, alive):
    def look():
        alive()
        desktop = pyatspi.Registry.getDesktop(0)
        for app in children(desktop):
            try:
                if app.name == "together" and app.get_process_id() == pid:
                    return app
            except Exception:  # noqa: BLE001
                pass
        return None
    app = wait_for("the app 'together' on the accessibility bus", timeout, look)
    # Polling must see the app as it is now, not as libatspi cached it.
    try:
        app.setCacheMask(Atspi.Cache.NONE)
    except Exception as e:  # noqa: BLE001
        log(f"note: cannot turn off libatspi's cache for the app ({e}); state reads may lag")
    return app


# ---------------------------------------------------------------------------------------------------------
# the test

PANE_ROLES = {"frame", "panel", "filler", "scroll pane", "section", "grouping", "internal frame"}
TEXTISH_ROLES = {"text", "entry", "document text", "document frame", "paragraph", "terminal", "password text"}


def check_tree(app):
    """Step 1: every named object a screen reader needs, with the role it shows."""
    log("step 1: the accessible tree")
    found = {}
    problems = []

    def need(name, roles=None, interfaces_needed=(), label=None, prefer=()):
        objs = find_all(app, name, roles)
        objs.sort(key=lambda o: role(o) not in prefer)  # stable: breadth-first order among equals
        if not objs:
            everything = find_all(app, name)
            seen = ", ".join(sorted({role(o) for o in everything})) or "none"
            problems.append(f"no object named {name!r}" + (f" with role {sorted(roles)}" if roles else "") +
                            f" (objects with that name, any role: {seen})")
            return None
        obj = objs[0]
        ifs = interfaces(obj)
        missing = [i for i in interfaces_needed if i not in ifs]
        if missing:
            problems.append(f"{name!r} ({role(obj)}) lacks the {', '.join(missing)} interface(s); it has {sorted(ifs)}")
        others = [role(o) for o in find_all(app, name) if o != obj]
        print(f"  found {label or name!r:26} role={role(obj)!r:18} interfaces={sorted(ifs)}" +
              (f"  (same name elsewhere: {', '.join(others)})" if others else ""), flush=True)
        found[label or name] = obj
        return obj

    # A dock is a frame (its title bar's tab, when docks are tabbed together, is a page tab and the tab bar a page
    # tab list named after the current tab): any role will do, a container is preferred.
    for pane in ("Machines", "Placement", "Chat", "Charts", "Performance"):
        need(pane, prefer=PANE_ROLES)
    for button in ("Launch", "Stop", "Send", "Auto place", "Bench", "Verify", "Export"):
        need(button, {"push button"}, ("Action",))
    msg = need("Message", TEXTISH_ROLES, ("Text", "EditableText"))
    if msg is not None and not has_state(msg, pyatspi.STATE_EDITABLE):
        problems.append("'Message' is not in state EDITABLE")
    conv = need("Conversation", None, ("Text",))
    if conv is not None and role(conv) not in TEXTISH_ROLES:
        print(f"  WARNING: 'Conversation' has role {role(conv)!r}; a multi-line transcript is usually 'text' "
              "(read-only) or 'document text'. Its text is readable through the Text interface, so this is "
              "reported, not failed.", flush=True)
    need("Complete", {"check box"}, ("Action",))
    for spin in ("Temperature", "Max tokens"):
        need(spin, {"spin button"}, ("Value",))
    # Two "New chat" buttons exist (the chat pane's and the toolbar's): take the chat pane's.
    chat = found.get("Chat")
    if chat is not None:
        need_in = find_all(chat, "New chat", {"push button"})
        if need_in:
            found["New chat"] = need_in[0]
            print(f"  found {'New chat'!r:26} role={role(need_in[0])!r:18} interfaces={sorted(interfaces(need_in[0]))}"
                  "  (the one inside 'Chat'; the toolbar has another)", flush=True)
    if "New chat" not in found:
        need("New chat", {"push button"}, ("Action", "Component"))
    if problems:
        raise Failure("the accessible tree is missing things:\n    " + "\n    ".join(problems))
    return found


def set_spin(obj, value):
    """Through the Value interface; should that not take, through the spin box's editable text."""
    name = obj.name
    try:
        v = obj.queryValue()
        v.currentValue = float(value)
        got = obj.queryValue().currentValue
        if abs(got - value) < 1e-6:
            log(f"{name!r} set to {value} through Value (reads back {got})")
            return "Value"
        log(f"{name!r}: Value write of {value} reads back {got}; trying EditableText")
    except Exception as e:  # noqa: BLE001
        log(f"{name!r}: Value write failed ({e}); trying EditableText")
    et = obj.queryEditableText()
    et.setTextContents(str(value))
    got = obj.queryValue().currentValue
    if abs(got - value) >= 1e-6:
        raise Failure(f"cannot set {name!r} to {value}: neither Value nor EditableText took (it reads {got})")
    log(f"{name!r} set to {value} through EditableText")
    return "EditableText"


def xdotool_click(button_obj, conv, continuation):
    """Step 4: one real X pointer click on 'New chat', at the place AT-SPI says it is."""
    if not shutil.which("xdotool"):
        log("step 4 SKIPPED: xdotool is not installed (Debian package xdotool); no real X click was made")
        return False
    ext = button_obj.queryComponent().getExtents(pyatspi.DESKTOP_COORDS)
    x, y = ext.x + ext.width // 2, ext.y + ext.height // 2
    log(f"step 4: 'New chat' extents (desktop) x={ext.x} y={ext.y} w={ext.width} h={ext.height}; clicking at {x},{y}")
    if ext.width <= 0 or ext.height <= 0:
        raise Failure(f"'New chat' reports empty extents {ext.x},{ext.y} {ext.width}x{ext.height}")
    if not enabled(button_obj):
        raise Failure("'New chat' is not enabled")
    r = subprocess.run(["xdotool", "mousemove", "--sync", str(x), str(y), "click", "1"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise Failure(f"xdotool failed ({r.returncode}): {r.stderr.strip()}")
    target = normalize(continuation)
    text = wait_for("the Conversation no longer holds the continuation (a new, empty chat)", 15,
                    lambda: (lambda t: t if target not in normalize(t) else None)(text_of(conv)))
    log(f"Conversation now reads: {normalize(text)!r}")
    return True


def extents(obj):
    e = obj.queryComponent().getExtents(pyatspi.DESKTOP_COORDS)
    return e.x, e.y, e.width, e.height


def centre(obj):
    x, y, w, h = extents(obj)
    return x + w // 2, y + h // 2


# A layer block is a checkable button (selected or not): Qt's bridge reports it as a check box.
BLOCK_ROLES = {"push button", "toggle button", "check box"}
LANE_NAME = re.compile(r"^127\.0\.0\.1:\d+$")


def lanes_of(app):
    """The board's lanes: objects named by their machine's address, with a size, top to bottom."""
    out = []
    for obj in walk(app):
        try:
            # The Machines table has cells with the same names: a lane is a container.
            if LANE_NAME.match(obj.name or "") and role(obj) in PANE_ROLES and extents(obj)[3] > 0:
                out.append(obj)
        except Exception:  # noqa: BLE001
            pass
    out.sort(key=lambda o: extents(o)[1])
    return out


def lane_holding(block, lanes):
    _, by = centre(block)
    for lane in lanes:
        x, y, w, h = extents(lane)
        if y <= by < y + h:
            return lane
    return None


def xdotool_drag(block, lane):
    """A real X drag: press on the block, move in steps to the target lane (same column), release."""
    sx, sy = centre(block)
    _, ly = centre(lane)
    tx, ty = sx, ly
    log(f"dragging from {sx},{sy} to {tx},{ty}")
    def xdo(*a):
        r = subprocess.run(["xdotool", *[str(x) for x in a]], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise Failure(f"xdotool {' '.join(map(str, a))} failed ({r.returncode}): {r.stderr.strip()}")
    xdo("mousemove", "--sync", sx, sy)
    time.sleep(0.2)
    xdo("mousedown", "1")
    time.sleep(0.2)
    steps = 12
    for i in range(1, steps + 1):
        xdo("mousemove", "--sync", sx + (tx - sx) * i // steps, sy + (ty - sy) * i // steps + (3 if i < steps else 0))
        time.sleep(0.05)
    xdo("mousemove", "--sync", tx, ty)
    time.sleep(0.3)
    xdo("mouseup", "1")
    time.sleep(0.3)


def drag_last_layer(app, layers):
    """Step 2a: the last layer block dragged onto the second machine's lane with real X events."""
    name = f"Layer {layers - 1}"
    blocks = find_all(app, name, BLOCK_ROLES)
    if not blocks:
        seen = [(o.name, role(o)) for o in walk(app, 20000) if "Layer" in (o.name or "") or LANE_NAME.match(o.name or "")]
        log(f"objects named like layers or lanes: {seen}; nodes walked: {sum(1 for _ in walk(app, 20000))}")
        raise Failure(f"no layer block named {name!r} (a push or toggle button) on the board")
    block = blocks[0]
    for n in range(layers):
        if not find_all(app, f"Layer {n}"):
            raise Failure(f"no layer block named 'Layer {n}'")
    lanes = wait_for("two lanes named host:port with extents", 20, lambda: (lambda l: l if len(l) >= 2 else None)(lanes_of(app)))
    log("lanes: " + ", ".join(f"{l.name} at y={extents(l)[1]} h={extents(l)[3]}" for l in lanes))
    bx, by, bw, bh = extents(block)
    log(f"{name!r}: role {role(block)!r}, extents x={bx} y={by} w={bw} h={bh}")
    if bw <= 0 or bh <= 0:
        raise Failure(f"{name!r} reports empty extents")
    source = lane_holding(block, lanes)
    target = lanes[1] if source is not lanes[1] else lanes[0]
    log(f"{name!r} sits in {source.name if source else 'no lane'}; the target is {target.name!r}"
        + (" (the second lane already held it: dragging to the first)" if target is lanes[0] else " (the second lane)"))
    xdotool_drag(block, target)
    moved = wait_for(f"{name!r} inside {target.name!r}", 10,
                     lambda: lane_holding(find_all(app, name, BLOCK_ROLES)[0], lanes_of(app)) is not None
                     and lane_holding(find_all(app, name, BLOCK_ROLES)[0], lanes_of(app)).name == target.name)
    # The placement check is a label: its text is its accessible name.
    def check_line():
        for obj in walk(app):
            n = obj.name or ""
            if role(obj) == "label" and (n.startswith("Valid:") or n.startswith("Cannot launch:")):
                return n
        return None
    line = wait_for("the placement check line", 10, check_line)
    log(f"placement check: {line!r}")
    if target is lanes[1] and "Valid: 2 stages" not in line:
        raise Failure(f"after the drag the placement check reads {line!r}, not two valid stages")
    return target.name


def run(args, tmp, screenshots):
    model = os.path.abspath(args.model)
    bindir = os.path.abspath(args.bin)
    ref = json.load(open(os.path.join(model, "reference.json")))
    case = ref["cases"][0]
    prompt, continuation, n_tokens = case["prompt"], case["generated_text"], len(case["generated_ids"])
    log(f"reference: prompt {prompt!r}, {n_tokens} tokens, continuation {continuation!r}")

    env = dict(os.environ)
    dirs = {
        "XDG_CONFIG_HOME": "config", "XDG_STATE_HOME": "xdg-state", "XDG_CACHE_HOME": "xdg-cache",
        "XDG_DATA_HOME": "xdg-data", "TOGETHER_STATE_DIR": "state", "TOGETHER_CACHE_DIR": "cache",
        "HF_HUB_CACHE": "hf-hub", "XDG_RUNTIME_DIR": "runtime",
    }
    for var, sub in dirs.items():
        env[var] = os.path.join(tmp, sub)
        os.makedirs(env[var], mode=0o700, exist_ok=True)
    env["TOGETHER_CONFIG_DIR"] = os.path.join(env["XDG_CONFIG_HOME"], "together")
    env["QT_LINUX_ACCESSIBILITY_ALWAYS_ON"] = "1"
    env["QT_QPA_PLATFORM"] = "xcb"
    env.pop("WAYLAND_DISPLAY", None)
    env.pop("HF_HOME", None)
    cmd = [os.path.join(bindir, "together"), "--model", os.path.join(model, "hf"), "--local-workers", "2", "--dtype", "f32"]
    app_log = open(os.path.join(tmp, "app.log"), "w")
    log("starting: " + " ".join(cmd))
    log(f"settings, state and caches under {tmp}")
    proc = subprocess.Popen(cmd, env=env, stdout=app_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    answered = False
    try:
        def alive():
            if proc.poll() is not None:
                app_log.flush()
                with open(app_log.name, errors="replace") as f:
                    if "could not connect to display" in f.read():
                        raise NoDisplay(f"the app could not connect to the X display {os.environ.get('DISPLAY')}")
                raise Failure(f"the app exited early with status {proc.returncode}")
        app = find_app(proc.pid, 30, alive)
        alive()
        log(f"app found: {app.name!r} (pid {app.get_process_id()}, toolkit {app.get_toolkit_name()} "
            f"{app.get_toolkit_version()})")
        # The tree fills in as the window is built: wait until the last of the panes is there.
        wait_for("the main window's tree", 15, lambda: alive() or find_all(app, "Send", {"push button"}))
        objs = check_tree(app)

        log("step 2: waiting for 'Launch' to be enabled (the placement over the 2 local workers)")
        launch = objs["Launch"]
        wait_for("'Launch' enabled", 90, lambda: alive() or enabled(launch))
        layers = json.load(open(os.path.join(model, "hf", "config.json")))["num_hidden_layers"]
        if shutil.which("xdotool"):
            dragged_to = drag_last_layer(app, layers)
            log(f"step 2a done: 'Layer {layers - 1}' now runs on {dragged_to}")
            try:
                log("screenshot after the drag: " + screenshot(screenshots["dragged"]) + f" -> {screenshots['dragged']}")
            except Exception as e:  # noqa: BLE001
                log(f"note: no screenshot after the drag ({e})")
            wait_for("'Launch' enabled after the drag", 30, lambda: alive() or enabled(launch))
        else:
            log("step 2a SKIPPED: xdotool is not installed; the layer was not dragged")
        log(f"pressing 'Launch' through its {do_action(launch)!r} action")
        send = objs["Send"]
        wait_for("'Send' enabled (the model is launched)", 120, lambda: alive() or enabled(send))

        log("step 3: generating through the chat pane")
        complete = objs["Complete"]
        if not has_state(complete, pyatspi.STATE_CHECKED):
            log(f"'Complete' is not checked: toggling it through its {do_action(complete, ('Toggle', 'Press', 'click'))!r} action")
            wait_for("'Complete' checked", 10, lambda: has_state(complete, pyatspi.STATE_CHECKED))
        else:
            log("'Complete' is checked (the default for a model without a chat template)")
        set_spin(objs["Temperature"], 0)
        set_spin(objs["Max tokens"], n_tokens)
        message = objs["Message"]
        et = message.queryEditableText()
        if not et.setTextContents(prompt) or text_of(message) != prompt:
            log("setTextContents did not take; trying insertText")
            et.deleteText(0, len(text_of(message)))
            et.insertText(0, prompt, len(prompt))
        if text_of(message) != prompt:
            raise Failure(f"cannot put the prompt into 'Message': it reads {text_of(message)!r}")
        log(f"'Message' reads {text_of(message)!r}")
        log(f"pressing 'Send' through its {do_action(send)!r} action")
        conv = objs["Conversation"]
        target = normalize(continuation)

        def answered_fully():
            alive()
            t = normalize(text_of(conv))
            at = t.find(target)
            return t if at >= 0 and "tokens/s" in t[at + len(target):] and enabled(send) else None
        try:
            text = wait_for("the Conversation holds the reference continuation, then 'tokens/s'", 60, answered_fully)
        except Failure as e:
            raise Failure(f"{e}\n    the Conversation did not show the reference continuation followed by 'tokens/s'.\n"
                          f"    expected (whitespace-normalized): {target!r}\n"
                          f"    Conversation text:                {normalize(text_of(conv))!r}")
        answered = True
        log(f"Conversation reads: {text!r}")
        try:
            log("screenshot of the answer: " + screenshot(screenshots["answer"]) + f" -> {screenshots['answer']}")
        except Exception as e:  # noqa: BLE001
            log(f"note: no screenshot of the answer ({e})")

        clicked = xdotool_click(objs["New chat"], conv, continuation)

        log("step 5: screenshot of the whole screen")
        try:
            log("screenshot: " + screenshot(screenshots["final"]) + f" -> {screenshots['final']}")
        except Exception as e:  # noqa: BLE001
            log(f"step 5 SKIPPED: no screenshot could be taken ({e}); install imagemagick for `import`")
        alive()
        return clicked
    except Failure:
        try:
            path = screenshots["failure"]
            log("screenshot at the failure: " + screenshot(path) + f" -> {path}")
        except Exception:  # noqa: BLE001
            pass
        raise
    finally:
        stop_app(proc)
        app_log.close()
        if not answered:
            with open(os.path.join(tmp, "app.log"), errors="replace") as f:
                tail = f.read().splitlines()[-40:]
            print("---- the app's output (last 40 lines) ----\n" + "\n".join(tail) + "\n----", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True, help="the folder with together, together-worker, together-cli")
    p.add_argument("--model", required=True, help="a reference model folder (hf/ and reference.json)")
    p.add_argument("--screenshots", help="where the PNGs go (default: BIN/../gui-screenshots)")
    p.add_argument("--keep", action="store_true", help="keep the temporary settings folder")
    args = p.parse_args()

    if not os.path.isfile(os.path.join(args.model, "reference.json")) or not os.path.isdir(os.path.join(args.model, "hf")):
        print(f"SKIP: the reference model is absent ({args.model} needs hf/ and reference.json)", flush=True)
        return EXIT_SKIP
    for b in ("together", "together-worker", "together-cli"):
        if not os.access(os.path.join(args.bin, b), os.X_OK):
            print(f"FAIL: {os.path.join(args.bin, b)} is missing (build the together, together-worker and "
                  "together-cli targets)", flush=True)
            return 1
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        print("FAIL: no session bus (run under dbus-run-session, see tests/gui/run_atspi_e2e.sh)", flush=True)
        return 1
    if not hold_display():
        print(f"DISPLAY {os.environ.get('DISPLAY')!r} cannot be opened", flush=True)
        return EXIT_NO_DISPLAY
    import_pyatspi()

    shots = os.path.abspath(args.screenshots or os.path.join(args.bin, os.pardir, "gui-screenshots"))
    screenshots = {k: os.path.join(shots, f) for k, f in
                   (("final", "atspi-e2e.png"), ("answer", "atspi-e2e-answer.png"), ("failure", "atspi-e2e-failure.png"),
                    ("dragged", "atspi-e2e-dragged.png"))}
    for stale in screenshots.values():  # a picture from an earlier run must not pass for this one's
        if os.path.exists(stale):
            os.remove(stale)
    become_subreaper()
    tmp = tempfile.mkdtemp(prefix="together-atspi-")
    # SIGTERM and SIGINT end the run through the finally blocks, which stop the app.
    def on_signal(signum, _frame):
        raise Failure(f"interrupted by signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        clicked = run(args, tmp, screenshots)
    except NoDisplay as e:
        print(f"{e}", flush=True)
        return EXIT_NO_DISPLAY
    except Failure as e:
        print(f"FAIL: {e}", flush=True)
        return 1
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        print(f"FAIL: unexpected error: {e}", flush=True)
        return 1
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("PASS: AT-SPI end-to-end" + ("" if clicked else " (the xdotool click was skipped: xdotool is absent)"),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
