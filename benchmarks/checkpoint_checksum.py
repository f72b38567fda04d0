"""Cost of the checkpoint checksums: CRC-32 of the files a DCP save writes, against the save itself.

Writes a state of ``--gib`` GiB (fp32 tensors of 64 MiB) with torch.distributed.checkpoint in one process,
then checksums the files as the trainer does after a save (``describe_files``, page cache warm) and
verifies them as a load does (``verify_checkpoint``)::

    python benchmarks/checkpoint_checksum.py --gib 1 [--dir /fast/disk/tmp]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402

from megatron_anchor.checkpoint import checkpoint_files, describe_files, verify_checkpoint  # noqa: E402


def main() -> None:
    """Print the save time, the checksum and verification rates, and their ratio to the save."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=1.0, help="size of the saved state")
    p.add_argument("--dir", default=None, help="where to write (default: the system temporary directory)")
    args = p.parse_args()
    n = max(1, round(args.gib * 16))
    state = {f"t{i}": torch.randn(16 << 20) for i in range(n)}  # 64 MiB each
    mib = n * 64
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        start = time.perf_counter()
        dcp.save(state, checkpoint_id=root, no_dist=True)
        save = time.perf_counter() - start
        start = time.perf_counter()
        files = describe_files(root, checkpoint_files(root))
        checksum = time.perf_counter() - start
        start = time.perf_counter()
        verify_checkpoint(root, {"files": files})
        verify = time.perf_counter() - start
    print(f"{mib} MiB in {len(files)} files: DCP save {save:.2f} s ({mib / save:.0f} MiB/s)")
    share = checksum / save
    print(f"CRC-32 after the save: {checksum:.2f} s ({mib / checksum:.0f} MiB/s, {share:.0%} of the save)")
    print(f"verification on load: {verify:.2f} s ({mib / verify:.0f} MiB/s)")


if __name__ == "__main__":
    main()
