"""Timing and memory for scripts/bench-backup. Standard library only (runs on any python3).

    measure.py run --results FILE --label LABEL [--log FILE] -- CMD ARGS...
        Runs CMD once; appends one JSON line to FILE: {label, wall_s, maxrss_kib, rss_method,
        rc, out}. wall_s is the process's wall time (spawn to exit, perf_counter); maxrss_kib
        its peak resident set in KiB (GNU time's %M, else polled VmHWM); out the last line of
        its stdout when that is JSON. stdout and stderr go to --log (default: ours).
        Exits with CMD's exit code.

    measure.py table --results FILE [--info FILE]
        The markdown summary (medians of the runs of each label) for BENCHMARKS.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


TIME = '/usr/bin/time'


def vm_hwm_kib(pid: int) -> int:
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(args: argparse.Namespace) -> int:
    cmd = args.cmd
    if cmd and cmd[0] == '--':
        cmd = cmd[1:]
    if not cmd:
        print('measure: no command', file=sys.stderr)
        return 2
    log = open(args.log, 'ab') if args.log else None
    # Peak RSS: ru_maxrss of an exec'd child starts at the RSS of the process that forked it
    # (Linux carries the old mm's high-water mark across exec), so a child forked from this
    # Python (10-15 MiB) would never show less than that. GNU time forks from ~1.5 MiB;
    # without it, /proc/<pid>/status VmHWM (per exec image, exact) is polled every 2 ms.
    use_time = os.access(TIME, os.X_OK)
    with tempfile.TemporaryFile() as stdout, tempfile.NamedTemporaryFile('r') as rss_file:
        full = [TIME, '-f', '%M', '-o', rss_file.name, *cmd] if use_time else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=stdout, stderr=log or None)
        hwm = 0
        if not use_time:
            while proc.poll() is None:
                hwm = max(hwm, vm_hwm_kib(proc.pid))
                time.sleep(0.002)
            wall = time.perf_counter() - t0
        else:
            proc.wait()
            wall = time.perf_counter() - t0
            lines = [line for line in rss_file.read().splitlines() if line.strip()]
            hwm = int(lines[-1]) if lines and lines[-1].strip().isdigit() else 0
        stdout.seek(0)
        out = stdout.read()
    if log:
        log.write(out)
        log.close()
    else:
        sys.stdout.buffer.write(out)
    last = None
    lines = [line for line in out.decode('utf-8', 'replace').splitlines() if line.strip()]
    if lines:
        try:
            last = json.loads(lines[-1])
        except ValueError:
            last = None
    rec = {
        'label': args.label,
        'wall_s': round(wall, 4),
        'maxrss_kib': hwm,
        'rss_method': 'time' if use_time else 'VmHWM-poll',
        'rc': proc.returncode,
        'out': last,
    }
    with open(args.results, 'a') as f:
        f.write(json.dumps(rec) + '\n')
    print(
        f"measure: {args.label}: {wall:.3f} s wall, peak RSS {hwm / 1024:.1f} MiB, exit {proc.returncode}",
        file=sys.stderr,
    )
    return proc.returncode


def fmt_s(v):
    if v is None:
        return '—'
    return f'{v * 1000:.0f} ms' if v < 1 else f'{v:.2f} s'


def fmt_mib(kib):
    return '—' if kib is None else f'{kib / 1024:.1f} MiB'


def table(args: argparse.Namespace) -> int:
    runs = {}
    with open(args.results) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                runs.setdefault(r['label'], []).append(r)
    info = {}
    if args.info:
        with open(args.info) as f:
            info = json.load(f)

    def med(label, key):
        rs = [r for r in runs.get(label, []) if r['rc'] == 0]
        if not rs:
            return None
        if key == 'py_total':
            vals = [r['out']['seconds']['total'] for r in rs if r.get('out')]
            return statistics.median(vals) if vals else None
        return statistics.median(r[key] for r in rs)

    def n(label):
        return len([r for r in runs.get(label, []) if r['rc'] == 0])

    def ratio(a, b):
        return '—' if a is None or b is None else f'{a / b:.2f}×'

    a = info.get('small', {})
    b = info.get('large', {})
    out = []
    out.append(f"Median of {info.get('repeat', '?')} runs each; ours = `backup-worker once` (release), "
               f"Python = `tests/bench/download.py` (atproto {info.get('atprotoVersion', '?')}, serial, "
               f"Accept-Encoding: {info.get('pyAcceptEncoding', '?')}). "
               f"PDS: @atproto/pds {info.get('pdsVersion', '?')} on loopback; "
               f"{info.get('cpus', '?')} CPUs ({info.get('cpuModel', '?')}).")
    out.append('')
    if a:
        out.append(f"- account A: {a.get('records')} records, {a.get('blobs')} blobs, "
                   f"{a.get('blobBytes', 0) / 1e6:.1f} MB of blobs (largest {a.get('largest', 0) / 1e6:.2f} MB, "
                   f"{a.get('over1MiB')} over 1 MiB); seeded in {a.get('seconds', {}).get('total')} s")
    if b:
        out.append(f"- account B: {b.get('records')} records, {b.get('blobs')} blobs; "
                   f"seeded in {b.get('seconds', {}).get('total')} s")
    out.append('')
    out.append('| measurement | ours | Python SDK (process) | Python SDK (download only) | ours / Python (process, download only) | target |')
    out.append('|---|---|---|---|---|---|')
    ours_a, py_a, py_a_dl = med('ours-full-A', 'wall_s'), med('py-A', 'wall_s'), med('py-A', 'py_total')
    out.append(f"| full backup, account A: wall | {fmt_s(ours_a)} | {fmt_s(py_a)} | {fmt_s(py_a_dl)} | "
               f"{ratio(ours_a, py_a)}, {ratio(ours_a, py_a_dl)} | ≤ 1.3× |")
    out.append(f"| peak RSS, account A ({a.get('records', '?')} records) | {fmt_mib(med('ours-full-A', 'maxrss_kib'))} | "
               f"{fmt_mib(med('py-A', 'maxrss_kib'))} | | | ≤ 64 MiB |")
    if runs.get('py-B') or runs.get('ours-full-B'):
        ours_b, py_b, py_b_dl = med('ours-full-B', 'wall_s'), med('py-B', 'wall_s'), med('py-B', 'py_total')
        out.append(f"| full backup, account B: wall | {fmt_s(ours_b)} | {fmt_s(py_b)} | {fmt_s(py_b_dl)} | "
                   f"{ratio(ours_b, py_b)}, {ratio(ours_b, py_b_dl)} | (none) |")
        out.append(f"| peak RSS, account B ({b.get('records', '?')} records) | {fmt_mib(med('ours-full-B', 'maxrss_kib'))} | "
                   f"{fmt_mib(med('py-B', 'maxrss_kib'))} | | | ≤ 64 MiB, flat vs A |")
    out.append(f"| re-backup of unchanged account A: process wall | {fmt_s(med('ours-again-A', 'wall_s'))} | | | | ≤ 100 ms |")
    out.append(f"| peak RSS, re-backup | {fmt_mib(med('ours-again-A', 'maxrss_kib'))} | | | | |")
    out.append('')
    out.append('Runs per label (successful / all): ' + ', '.join(
        f'{k} {n(k)}/{len(v)}' for k, v in sorted(runs.items())))
    print('\n'.join(out))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description='timing and memory for scripts/bench-backup')
    sub = ap.add_subparsers(dest='what', required=True)
    r = sub.add_parser('run')
    r.add_argument('--results', required=True)
    r.add_argument('--label', required=True)
    r.add_argument('--log')
    r.add_argument('cmd', nargs=argparse.REMAINDER)
    t = sub.add_parser('table')
    t.add_argument('--results', required=True)
    t.add_argument('--info')
    args = ap.parse_args()
    return run(args) if args.what == 'run' else table(args)


if __name__ == '__main__':
    sys.exit(main())
