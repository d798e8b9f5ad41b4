"""Plain download of an ATProto account with the Python `atproto` SDK: the reference that
scripts/bench-backup times our backup against (issue 4, "Performance").

What a simple user script does, serially, with the SDK's synchronous client:
  1. handle -> DID (`com.atproto.identity.resolveHandle` on the PDS; `.test` handles have no DNS),
     DID document from the PLC directory (the SDK's IdResolver);
  2. `com.atproto.sync.getRepo` -> OUT/repo.car;
  3. `com.atproto.sync.listBlobs`, paged (the PDS sends a cursor on every non-empty page, so stop
     on an empty one), then every `com.atproto.sync.getBlob` -> OUT/blobs/<cid>.

    python download.py --pds http://127.0.0.1:PORT --plc http://127.0.0.1:PORT \
        --account bench10k.test --out DIR

The PDS is the one given (as our CLI's --pds): the DID document names http://localhost:PORT,
where only IPv4 listens. Prints one JSON line with counts, bytes and per-phase seconds.
No verification is done (a plain download); the SDK reads each response whole into memory.
httpx asks for compressed responses, so the PDS gzips getRepo's CAR (blobs are sent as they
are); BENCH_ACCEPT_ENCODING=identity (scripts/bench-backup's PY_ACCEPT_ENCODING) turns that off.
"""

import argparse
import json
import os
import sys
import time

from atproto import Client, IdResolver
from atproto_client.request import Request


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--pds', required=True, help='PDS base URL')
    ap.add_argument('--plc', required=True, help='PLC directory URL')
    ap.add_argument('--account', required=True, help='handle or DID')
    ap.add_argument('--out', required=True, help='directory to write repo.car and blobs/ into')
    ap.add_argument('--timeout', type=float, default=300.0, help='HTTP timeout, seconds')
    args = ap.parse_args()

    t0 = time.perf_counter()
    # The SDK's default httpx timeout (5 s) is too short for getRepo of a large repo.
    client = Client(base_url=args.pds, request=Request(timeout=args.timeout))
    if os.environ.get('BENCH_ACCEPT_ENCODING'):
        # Not what a plain script does: lets the benchmark turn off the PDS's gzip of getRepo.
        client.request.add_additional_header('Accept-Encoding', os.environ['BENCH_ACCEPT_ENCODING'])
    sync = client.com.atproto.sync

    did = args.account
    if not did.startswith('did:'):
        did = client.com.atproto.identity.resolve_handle({'handle': args.account}).did
    doc = IdResolver(plc_url=args.plc, timeout=args.timeout).did.resolve(did)
    if doc is None:
        print(f'download: no DID document for {did}', file=sys.stderr)
        return 1
    t_identity = time.perf_counter()

    os.makedirs(os.path.join(args.out, 'blobs'), exist_ok=True)
    car = sync.get_repo({'did': did})
    with open(os.path.join(args.out, 'repo.car'), 'wb') as f:
        f.write(car)
    repo_bytes = len(car)
    del car
    t_repo = time.perf_counter()

    cids = []
    cursor = None
    while True:
        params = {'did': did, 'limit': 1000}
        if cursor:
            params['cursor'] = cursor
        page = sync.list_blobs(params)
        if not page.cids:
            break
        cids.extend(page.cids)
        cursor = page.cursor
        if not cursor:
            break
    t_list = time.perf_counter()

    blob_bytes = 0
    for cid in cids:
        data = sync.get_blob({'did': did, 'cid': cid})
        with open(os.path.join(args.out, 'blobs', cid), 'wb') as f:
            f.write(data)
        blob_bytes += len(data)
    t_blobs = time.perf_counter()

    print(json.dumps({
        'did': did,
        'pdsInDoc': doc.get_pds_endpoint(),
        'repoBytes': repo_bytes,
        'blobs': len(cids),
        'blobBytes': blob_bytes,
        'seconds': {
            'identity': round(t_identity - t0, 3),
            'repo': round(t_repo - t_identity, 3),
            'listBlobs': round(t_list - t_repo, 3),
            'blobs': round(t_blobs - t_list, 3),
            'total': round(t_blobs - t0, 3),
        },
    }))
    return 0


if __name__ == '__main__':
    sys.exit(main())
