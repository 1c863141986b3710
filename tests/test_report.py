"""The gallery report (``pmllm-batch report``): rendered in headless Chromium, links that stay inside the folder,
EXIF-oriented thumbnails made by the tool, failed files and the demo disclaimer, and bad input.

One library is ranked once per module with the demo model through the CLI (``scored``); every test works on its own
copy (``library``, from conftest).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from pmllm_batch.db import PhotoRecord, Store
from pmllm_batch.outputs.bursts import RankingView
from pmllm_batch.outputs.report import MANIFEST, build_report, demo_disclaimer
from pmllm_batch.outputs.stars import stars_by_hash
from pmllm_batch.profiles import Profile
from tests.helpers import PROFILES, Library, Scored, make_library, ranked_library, tree_digest
from tests.imagegen import make_photo_folder, orient_for_exif, photo_array

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
ROTATED = "rotated.jpg"  # stored sideways with EXIF orientation 6; upright it is 120 x 80
TAKEN = "2021:05:01 12:34:56"


def make_report_library(lib: Path) -> None:
    """The xmp tests' library plus one sideways-stored JPEG with a capture time: 11 good photos, 1 bad."""
    make_library(lib)
    stored = Image.fromarray(orient_for_exif(photo_array(120, 80, seed=42), 6), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x0132] = TAKEN  # DateTime
    stored.save(lib / ROTATED, format="JPEG", quality=92, exif=exif)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scored]:
    with ranked_library(tmp_path_factory.mktemp("report-scored"), make_report_library) as s:
        yield s


def report(library: Library, out: Path, *args: str) -> dict:
    code, stdout, err = library.run("report", "--out", str(out), *args, "--json")
    assert code == 0, err
    return json.loads(stdout)


class _Page(HTMLParser):
    """Collects links, images per person column and table rows of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.columns: dict[str, int] = {}  # data-profile -> <img> count inside its column
        self.order: list[str] = []
        self._column: str | None = None
        self._depth = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("href", "src"):
            if a.get(name) is not None:
                self.links.append(str(a[name]))
        if tag == "section" and "person" in (a.get("class") or "").split():
            self._column, self._depth = str(a["data-profile"]), 0
            self.columns[self._column] = 0
            self.order.append(self._column)
        if self._column is not None:
            if tag == "section":
                self._depth += 1
            if tag == "img":
                self.columns[self._column] += 1

    def handle_endtag(self, tag: str) -> None:
        if self._column is not None and tag == "section":
            self._depth -= 1
            if self._depth == 0:
                self._column = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180, check=True)


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------


@needs_chromium
def test_report_renders_in_headless_chromium_with_one_column_per_person(library: Library, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = report(library, out, "--top", "4")
    assert summary["people"] == {
        name: {"page": f"person-{name}.html", "shown": 4, "ranked": 11} for name in PROFILES
    }
    index = out / "index.html"

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", index.as_uri())
    with Image.open(shot) as img:
        assert img.size == (1280, 1600)
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 1000  # photos, not a blank page
        white = sum(n for n, c in colours if c == (255, 255, 255))
        assert white < 0.8 * 1280 * 1600

    dom = chromium(tmp_path, "--dump-dom", index.as_uri()).stdout
    page = parse(dom)
    assert page.order == list(PROFILES)  # the family, side by side, in profile order
    assert page.columns == {name: 4 for name in PROFILES}
    for name in PROFILES:
        person = parse(chromium(tmp_path, "--dump-dom", (out / f"person-{name}.html").as_uri()).stdout)
        assert sum(1 for link in person.links if link.startswith("thumbs/")) == 4


def test_every_link_stays_inside_the_report_folder_and_nothing_comes_from_the_network(
    library: Library, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    report(library, out, "--top", "11")
    pages = sorted(out.glob("*.html"))
    assert [p.name for p in pages] == ["index.html", *(f"person-{name}.html" for name in PROFILES)]
    root = out.resolve()
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert not re.search(r"https?:|//|@import|@font-face|url\(|<script|<link", html.split("<body>", 1)[1])
        assert not re.search(r"https?:|@import|@font-face|url\(|<script|<link", html.split("<body>", 1)[0])
        links = parse(html).links
        assert links
        for link in links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc, link
            if not parts.path:
                continue  # a fragment on the same page
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_relative_to(root) and target.is_file(), link
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert manifest["files"] == on_disk


def test_thumbnails_are_made_upright_without_metadata_and_photo_folders_stay_untouched(
    library: Library, tmp_path: Path
) -> None:
    before = tree_digest(library.lib)
    out = tmp_path / "report"
    summary = report(library, out, "--top", "11")
    assert summary["thumbnails_made"] == 11 and summary["problems"] == []
    assert tree_digest(library.lib) == before

    html = (out / "person-ana.html").read_text(encoding="utf-8")
    row = re.search(r'<tr id="rank-\d+">(?:(?!</tr>).)*?<strong>rotated\.jpg</strong>(?:(?!</tr>).)*</tr>', html, re.S)
    assert row is not None
    thumb = re.search(r'src="(thumbs/[^"]+)"', row.group(0))
    assert thumb is not None
    with Image.open(out / thumb.group(1)) as img:
        assert img.format == "JPEG"
        assert img.size == (120, 80)  # upright (stored 80 x 120); smaller than thumb_size, so never enlarged
        assert not img.getexif()


def test_person_pages_show_score_stars_and_capture_date(library: Library, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report(library, out, "--top", "11")
    with library.env.store() as store:
        ranking = store.ranking("bernd")
    html = (out / "person-bernd.html").read_text(encoding="utf-8")
    rows = re.findall(r'<tr id="rank-(\d+)">(.*?)</tr>', html, re.S)
    assert [int(r) for r, _ in rows] == list(range(1, 12))
    for (_, row), item in zip(rows, ranking, strict=True):
        assert f"<strong>{Path(item.path).name}</strong>" in row
        assert f'<td class="num">{item.score:.3f}</td>' in row
        assert re.search(r'title="[1-5] stars?">(★+☆*)</span>', row)
    top_stars = re.search(r'title="([1-5]) stars?"', rows[0][1])
    assert top_stars is not None and top_stars.group(1) == "5"
    rotated = next(row for _, row in rows if "<strong>rotated.jpg</strong>" in row)
    assert '<td class="num">2021-05-01 12:34</td>' in rotated
    assert '<td class="num">unknown</td>' in next(row for _, row in rows if "<strong>landscape.jpg</strong>" in row)


def test_failed_files_and_the_demo_disclaimer_are_shown(library: Library, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = report(library, out)
    assert summary["demo"] is True
    assert [(Path(f["path"]).name, f["reason"]) for f in summary["failures"]] == [("truncated.jpg", "truncated")]
    html = (out / "index.html").read_text(encoding="utf-8")
    text = " ".join("".join(parse(html).text).split())
    assert "Demo model. demo: a tiny model trained on a synthetic task" in text and demo_disclaimer("demo") in text
    assert "Files that could not be read (1)" in text
    bad = library.lib / "bad" / "truncated.jpg"
    assert re.search(rf'<tr><td class="path">{re.escape(str(bad))}</td><td>truncated</td><td>image data is \w', html)
    person = " ".join("".join(parse((out / "person-ana.html").read_text("utf-8")).text).split())
    assert demo_disclaimer("demo") in person


def test_profiles_and_paths_scope_the_report(library: Library, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = report(library, out, "--profile", "coarse", "--profile", "ana", str(library.lib / "2021"))
    assert summary["people"] == {
        "coarse": {"page": "person-coarse.html", "shown": 2, "ranked": 2},
        "ana": {"page": "person-ana.html", "shown": 2, "ranked": 2},
    }
    page = parse((out / "index.html").read_text(encoding="utf-8"))
    assert page.order == ["coarse", "ana"] and page.columns == {"coarse": 2, "ana": 2}
    assert summary["failures"] == []  # the failed file lies outside the scope


def test_item5_report_ranks_are_counted_within_what_is_shown(library: Library, tmp_path: Path) -> None:
    with library.env.store() as store:
        full = RankingView(store).full("ana")
    stars = stars_by_hash(full)
    assert len(full) >= 3
    # Every photo but ana's #2: the report must number them 1..n, as `export --under` does, not 1, 3, 4, ...
    shown = [r for r in full if r.rank != 2]
    files = [r.path for r in shown]
    out = tmp_path / "report"
    summary = report(library, out, "--profile", "ana", "--top", str(len(full)), *files)
    assert summary["people"]["ana"]["shown"] == summary["people"]["ana"]["ranked"] == len(shown)

    html = (out / "person-ana.html").read_text(encoding="utf-8")
    rows = re.findall(r'<tr id="rank-(\d+)">\s*<td class="num">(\d+)</td>.*?<strong>([^<]+)</strong>.*?'
                      r'<span class="muted">([1-5])</span>', html, re.S)
    expected = [(i, i, Path(r.path).name, stars[r.content_hash]) for i, r in enumerate(shown, start=1)]
    assert [(int(a), int(b), name, int(s)) for a, b, name, s in rows] == expected  # stars: the whole ranking's
    index = (out / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'href="person-ana.html#rank-(\d+)"', index) == [str(i) for i in range(1, len(shown) + 1)]
    assert re.findall(r"<figcaption>#(\d+) ", index) == [str(i) for i in range(1, len(shown) + 1)]

    code, text, err = library.run("export", "--profile", "ana", "--format", "json",
                                  *[arg for path in files for arg in ("--under", path)])
    assert code == 0, err
    assert [(row["rank"], row["path"]) for row in json.loads(text)] == list(enumerate(files, start=1))


def _store_scored_by(tmp_path: Path, preset: str, facts: dict[str, bool]) -> Store:
    """Two photos scored for "ana" by a model registered as ``preset`` with ``facts`` (no model is loaded)."""
    lib = tmp_path / "lib"
    made = make_photo_folder(lib)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    records = []
    for path in sorted(made.values())[:2]:
        data = path.read_bytes()
        records.append(PhotoRecord(path=str(path), root=str(lib), content_hash=hashlib.sha256(data).hexdigest(),
                                   size=len(data), mtime_ns=path.stat().st_mtime_ns))
    store.upsert_photos(records)
    pid, _ = store.upsert_profile(Profile(name="ana"), "You are ana.")
    mid = store.ensure_model(f"fp-{preset}", preset, facts)
    store.add_scores(mid, [(r.content_hash or "", pid, 3.0 + i, [0.2] * 5) for i, r in enumerate(records)])
    return store


def _page_text(path: Path) -> str:
    return " ".join("".join(parse(path.read_text(encoding="utf-8")).text).split())


def test_the_disclaimer_follows_the_stored_demo_flag_and_names_the_preset(tmp_path: Path) -> None:
    smol = (
        "Demo model. smol: a real LLM (SmolLM2-135M-Instruct) with an adapter trained on a synthetic task — scores "
        "show the mechanism, not anyone's real taste."
    )
    with _store_scored_by(tmp_path / "smol", "smol", {"demo": True}) as store:
        summary = build_report(store, tmp_path / "smol" / "report")
    assert (summary.demo, summary.preset) == (True, "smol")
    for page in ("index.html", "person-ana.html"):
        text = _page_text(tmp_path / "smol" / "report" / page)
        assert smol in text and demo_disclaimer("smol") in text and "demo: a tiny model" not in text
    # a model whose config is not a demo gets no disclaimer, whatever its preset is called
    with _store_scored_by(tmp_path / "real", "demo", {"demo": False}) as store:
        summary = build_report(store, tmp_path / "real" / "report")
    assert summary.demo is False and "Demo model." not in _page_text(tmp_path / "real" / "report" / "index.html")
    # a model registered before the flag was stored: the one demo preset then was "demo"
    with _store_scored_by(tmp_path / "old", "demo", {}) as store:
        summary = build_report(store, tmp_path / "old" / "report")
    assert summary.demo is True and demo_disclaimer("demo") in _page_text(tmp_path / "old" / "report" / "index.html")


# ---------------------------------------------------------------------------------------------------------------------
# Re-runs and bad input
# ---------------------------------------------------------------------------------------------------------------------


def test_a_rerun_reuses_thumbnails_and_removes_only_its_own_stale_files(library: Library, tmp_path: Path) -> None:
    out = tmp_path / "report"
    first = report(library, out, "--top", "11")
    assert (first["thumbnails_made"], first["thumbnails_reused"]) == (11, 0)
    second = report(library, out, "--top", "1")
    assert second["thumbnails_made"] == 0 and second["thumbnails_reused"] == len(set(_tops(library)))
    assert second["removed"] == 11 - second["thumbnails_reused"]
    assert len(list((out / "thumbs").iterdir())) == second["thumbnails_reused"]


def _tops(library: Library) -> list[str]:
    with library.env.store() as store:
        return [store.ranking(name)[0].content_hash for name in PROFILES]


def test_a_photo_deleted_since_the_ranking_is_listed_without_a_thumbnail(library: Library, tmp_path: Path) -> None:
    gone = library.lib / "landscape.jpg"
    gone.unlink()
    before = tree_digest(library.lib)
    out = tmp_path / "report"
    code, stdout, err = library.run("report", "--out", str(out), "--top", "11")
    assert code == 0, err
    assert stdout.splitlines() == [
        f"wrote {out / 'index.html'} (3 profiles, 10 thumbnails made, 0 reused, 1 photo without a thumbnail, "
        "1 failed file listed)",
        f"  {gone}: vanished — file no longer exists",
    ]
    page = parse((out / "index.html").read_text(encoding="utf-8"))
    assert page.columns == {name: 10 for name in PROFILES}
    assert "landscape.jpg: no thumbnail (vanished: file no longer exists)" in "".join(page.text)
    assert tree_digest(library.lib) == before


def test_the_report_never_goes_into_a_photo_folder_or_over_foreign_files(library: Library, tmp_path: Path) -> None:
    before = tree_digest(library.lib)
    for out in (library.lib / "report", library.lib, tmp_path):
        code, stdout, err = library.run("report", "--out", str(out))
        assert code == 2 and stdout == "" and len(err.splitlines()) == 1, err
        assert "must go in a folder outside your photo folders" in err or "did not make" in err
    foreign = tmp_path / "elsewhere"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    code, _, err = library.run("report", "--out", str(foreign))
    assert code == 2 and err.strip().endswith("choose an empty or new folder.")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    code, _, err = library.run("report", "--out", str(tmp_path / "new"), "--profile", "zed")
    assert code == 2 and "unknown profile 'zed'" in err and not (tmp_path / "new").exists()
    assert tree_digest(library.lib) == before


def test_templates_ship_as_package_data() -> None:
    templates = resources.files("pmllm_batch.outputs").joinpath("templates", "report")
    assert sorted(p.name for p in templates.iterdir() if p.name.endswith(".j2")) == [
        "base.html.j2",
        "index.html.j2",
        "person.html.j2",
    ]
