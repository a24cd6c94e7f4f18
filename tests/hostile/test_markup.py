"""Text from the index or the user prints as text: brackets and emoji codes are not markup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY = ("--model", "xr-tiny", "--pretrained", "none", "--device", "cpu")
CAPTION = "a [/oops] red circle :smile: [bold]loud[/bold]"


def _media(world_dir: Path, root: Path) -> Path:
    src = sorted((world_dir / "test").glob("*.png"))[:4]
    root.mkdir()
    (root / "[red]dir").mkdir()  # a folder whose name opens a style
    for i, png in enumerate(src):
        name = "[bold]x" if i == 0 else f"[red]{i}"
        folder = root / "[red]dir" if i == 1 else root
        shutil.copy(png, folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(CAPTION if i == 0 else f"plain {i}\n")
    (root / "[red]bad.png").write_bytes(b"not an image")
    return root


def test_brackets_in_paths_and_captions_print_verbatim(
    world_dir: Path, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    media = _media(world_dir, tmp_path / "m")
    idx = tmp_path / "idx"
    r = cli("index", media, "--index", idx, *TINY)
    assert r.returncode == 0, r.stderr
    assert "skipped [red]bad.png" in r.stderr.replace(str(media) + "/", "")

    r = cli("search", "red circle", "--index", idx, "-k", "4", "--modality", "text")
    assert r.returncode == 0, r.stderr
    flat = "".join(r.stdout.split())  # table cells may wrap; compare without whitespace
    assert "".join(CAPTION.split()) in flat

    r = cli("search", "red circle", "--index", idx, "-k", "4")
    assert r.returncode == 0, r.stderr
    flat = "".join(r.stdout.split())
    assert "[bold]x.png" in flat and "[red]dir/[red]1.png" in flat

    r = cli("search", "red circle", "--index", idx, "-k", "4", "--json")
    assert {Path(h["path"]).name for h in json.loads(r.stdout)} >= {"[bold]x.png"}

    r = cli("info", idx)
    assert r.returncode == 0 and str(idx) in r.stdout, r.stderr


def test_an_error_naming_a_bracketed_path_prints_it(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "[bold]nope[/]"
    r = cli("info", missing)
    assert r.returncode == 5, r.stderr
    assert "[bold]nope[/]" in r.stderr and "Traceback" not in r.stderr
