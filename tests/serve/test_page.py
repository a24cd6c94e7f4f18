"""The search page in headless Chromium, against the real app on a briefly trained index.

One world (n=300, 32 px) trains an xr-tiny model for a few hundred steps (seconds); the whole
world is indexed (folders train/ and test/, plus odd/ whose names and captions are hostile
HTML). Expected results come from the world's labels, never from the model's own answers.
Screenshots of the main views are saved under the test's temporary folder.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import make_driver, require_browser, running
from PIL import Image

from xretrieve.encoders import load_encoder
from xretrieve.indexer import IndexOptions, index_folder
from xretrieve.serve import ServeConfig, create_app
from xretrieve.train.clip import TrainConfig, train
from xretrieve.train.world import Label, load_labels, make_world

pytestmark = pytest.mark.slow  # trains a model (about 15 s on 2 quiet cores)

# One thread: the training is small, and extra threads only fight over a busy CI machine.
TRAIN = TrainConfig(model="xr-tiny", max_seconds=None, max_steps=600, batch_size=64, threads=1)
WAIT = 30.0
# A caption and a file name that would run script if the page inserted them as HTML.
HOSTILE_CAPTION = '<script>window.__xss = 1</script> a "quoted" <b>bold</b> & [red] circle'
HOSTILE_NAME = "<img src=x onerror=window.__xss=2>.png"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained world index: its folder, the world's labels and the hostile item's path."""
    require_browser()  # no minute of training when the tests are going to skip anyway
    root = tmp_path_factory.mktemp("page")
    w = root / "w"
    make_world(w, n=300, seed=3, image_size=32)
    train(w / "train", root / "model", config=TRAIN)
    odd = w / "odd"
    odd.mkdir()
    # A turned copy of a test image: its own pixels, so no other item ties with it.
    with Image.open(sorted((w / "test").glob("*.png"))[0]) as im:
        im.transpose(Image.Transpose.ROTATE_90).save(odd / HOSTILE_NAME)
    (odd / HOSTILE_NAME).with_suffix(".txt").write_text(HOSTILE_CAPTION + "\n", encoding="utf-8")
    encoder = load_encoder(str(root / "model"), device="cpu", batch_size=64)
    index_folder(w, root / "index", encoder=encoder, options=IndexOptions(progress=False))
    return {"root": w, "index": root / "index", "labels": load_labels(w)}


@pytest.fixture(scope="module")
def server(world: dict[str, Any]) -> Iterator[str]:
    app = create_app(ServeConfig(indexes={"world": world["index"]}, device="cpu", threads=2))
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    drv = make_driver(width=1280, height=800)
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots of the main views go."""
    return tmp_path_factory.mktemp("screenshots")


# ---- page helpers ----


def wait_for(driver: Any, condition: Any, what: str, timeout: float = WAIT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: condition(d), message=what
    )


def settle(driver: Any) -> str:
    """Wait until the result grid is no longer loading; its state (done, more, error, ...)."""
    return str(
        wait_for(
            driver,
            lambda d: d.execute_script(
                "const s = document.getElementById('results').dataset.state;"
                "return s && s !== 'loading' && s !== 'stale' ? s : null;"
            ),
            "the search to finish",
        )
    )


def mark_stale(driver: Any) -> None:
    """Mark the grid, so that `settle` waits for the next search rather than the last one."""
    driver.execute_script("document.getElementById('results').dataset.state = 'stale';")


def open_page(driver: Any, url: str) -> str:
    driver.get(url)
    return settle(driver)


def type_query(driver: Any, text: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "q")
    box.clear()
    mark_stale(driver)
    box.send_keys(text + Keys.ENTER)
    return settle(driver)


def result_paths(driver: Any) -> list[str]:
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll('#results .card')].map(c => c.title);"
        )
    )


def result_ids(driver: Any) -> list[str]:
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll('#results .card')].map(c => c.dataset.id);"
        )
    )


def error_text(driver: Any) -> str | None:
    return driver.execute_script(
        "const e = document.getElementById('error'); return e.hidden ? null : e.textContent;"
    )


def thumbs_decoded(driver: Any, n: int) -> bool:
    return bool(
        driver.execute_script(
            "const imgs = [...document.querySelectorAll('#results .card img')].slice(0, arguments[0]);"
            "return imgs.length === arguments[0] && imgs.every(i => i.complete && i.naturalWidth > 0);",
            n,
        )
    )


def set_where(driver: Any, where: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.getElementById('filters').open = true;")
    box = driver.find_element(By.ID, "f-where")
    box.clear()
    mark_stale(driver)
    box.send_keys(where + Keys.ENTER)
    return settle(driver)


def concepts(labels: dict[str, Label], path: str) -> frozenset[str] | None:
    label = labels.get(path)
    return frozenset(label.concepts) if label else None


def page_errors(driver: Any) -> list[str]:
    """Console errors other than the failed requests the tests provoke on purpose."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


# ---- tests ----


def test_a_text_query_finds_the_expected_image(
    driver: Any, server: str, world: dict[str, Any], shots: Path
) -> None:
    from selenium.webdriver.common.by import By

    labels: dict[str, Label] = world["labels"]
    open_page(driver, server + "/")
    assert driver.find_element(By.ID, "index-picker").is_displayed() is False  # one index
    # Two-object training scenes: the query is one of the image's captions, the expected
    # images are those with the same objects (by the labels). A tiny model trained for
    # seconds is not perfect, so most (not all) of five queries must find one in the top 12.
    queries = sorted(
        (p for p, lab in labels.items() if lab.split == "train" and len(lab.concepts) == 2)
    )[:5]
    found = 0
    for path in queries:
        assert type_query(driver, labels[path].captions[0]) in ("done", "more")
        top = result_paths(driver)[:12]
        assert len(top) == 12
        found += any(concepts(labels, p) == concepts(labels, path) for p in top)
    assert found >= 3, f"only {found} of 5 queries found their scene in the first 12"
    # The last query's thumbnails really decoded, and the URL holds the query.
    wait_for(driver, lambda d: thumbs_decoded(d, 12), "12 thumbnails to decode")
    assert "q=" in driver.current_url
    driver.save_screenshot(str(shots / "results.png"))
    before = result_ids(driver)
    driver.refresh()
    settle(driver)
    assert result_ids(driver) == before  # a reloaded (or shared) URL gives the same search
    assert driver.find_element(By.ID, "q").get_attribute("value") == labels[queries[-1]].captions[0]
    assert page_errors(driver) == []


def test_detail_view_and_more_like_this(
    driver: Any, server: str, world: dict[str, Any], shots: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(driver, server + "/?q=" + "a%20big%20red%20circle")
    first = driver.find_element(By.CSS_SELECTOR, "#results .card")
    item_id, item_path = first.get_attribute("data-id"), first.get_attribute("title")
    # Keyboard: focus the first result and press Enter.
    driver.execute_script("arguments[0].focus();", first)
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    dialog = driver.find_element(By.ID, "detail")
    wait_for(driver, lambda d: dialog.get_attribute("open") is not None, "the detail view")
    wait_for(
        driver,
        lambda d: d.execute_script(
            "const i = document.getElementById('d-image'); return i.complete && i.naturalWidth > 0;"
        ),
        "the full image to decode",
    )
    wait_for(
        driver,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#d-captions a")) > 0,
        "the nearest captions",
    )
    link = driver.find_element(By.CSS_SELECTOR, "#d-captions a")
    assert "q=" in (link.get_attribute("href") or "")  # each nearest caption links to its search
    meta = driver.find_element(By.ID, "d-meta").text
    assert item_path in meta and "width" in meta
    caption = first.find_element(By.CLASS_NAME, "caption").get_attribute("textContent")
    assert caption and caption in world["labels"][item_path].captions
    assert driver.find_element(By.ID, "d-caption").get_attribute("textContent") == caption
    driver.save_screenshot(str(shots / "detail.png"))
    # Escape closes it; Enter opens it again.
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_for(driver, lambda d: dialog.get_attribute("open") is None, "the detail view to close")
    driver.execute_script("arguments[0].focus();", first)
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(driver, lambda d: dialog.get_attribute("open") is not None, "the detail view")
    mark_stale(driver)
    driver.find_element(By.ID, "d-like").click()
    settle(driver)
    assert dialog.get_attribute("open") is None
    ids = result_ids(driver)
    assert ids[0] == item_id  # more like this: the item itself comes first
    assert len(ids) == len(set(ids)) >= 12
    assert "id=" + item_id in driver.current_url
    assert driver.find_element(By.ID, "query-chip").is_displayed()
    # Search by its caption, in one click from the detail view.
    driver.find_element(By.CSS_SELECTOR, "#results .card").click()
    wait_for(driver, lambda d: dialog.get_attribute("open") is not None, "the detail view")
    caption = driver.find_element(By.ID, "d-caption").text
    mark_stale(driver)
    driver.find_element(By.ID, "d-bycaption").click()
    settle(driver)
    assert driver.find_element(By.ID, "q").get_attribute("value") == caption
    assert len(result_ids(driver)) >= 12
    # Back goes to the "more like this" search.
    mark_stale(driver)
    driver.back()
    settle(driver)
    assert result_ids(driver)[0] == item_id


def _drop_file(driver: Any, data: bytes, name: str) -> None:
    """Drop a file on the drop zone the way a browser does: a DragEvent with a DataTransfer."""
    driver.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const file = new File([bytes], arguments[1], {type: 'image/png'});
        const dt = new DataTransfer();
        dt.items.add(file);
        const zone = document.getElementById('drop');
        for (const type of ['dragenter', 'dragover', 'drop']) {
          zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
        }
        """,
        base64.b64encode(data).decode("ascii"),
        name,
    )


def test_drop_or_pick_an_image(driver: Any, server: str, world: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    labels: dict[str, Label] = world["labels"]
    open_page(driver, server + "/")
    tests = sorted(p for p, lab in labels.items() if lab.split == "test")
    dropped, picked = tests[3], tests[4]
    mark_stale(driver)
    _drop_file(driver, (world["root"] / dropped).read_bytes(), "dropped.png")
    assert settle(driver) in ("done", "more")
    assert result_paths(driver)[0] == dropped  # the same pixels: the same vector, first
    assert "dropped.png" in driver.find_element(By.ID, "query-chip-text").text
    assert "dragging" not in (driver.find_element(By.TAG_NAME, "body").get_attribute("class") or "")
    # The file picker is the fallback for the same search.
    mark_stale(driver)
    driver.find_element(By.ID, "file").send_keys(str(world["root"] / picked))
    settle(driver)
    assert result_paths(driver)[0] == picked


def test_filters_are_obeyed(driver: Any, server: str, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(driver, server + "/?q=a%20small%20blue%20square")
    driver.execute_script("document.getElementById('filters').open = true;")
    folder = Select(driver.find_element(By.ID, "f-folder"))
    assert {o.text for o in folder.options} >= {"any", "train", "test", "odd"}
    mark_stale(driver)
    folder.select_by_visible_text("test")
    settle(driver)
    paths = result_paths(driver)
    assert paths and all(p.startswith("test/") for p in paths)
    assert "folder=test" in driver.current_url
    # The free WHERE box is ANDed with the facet.
    assert set_where(driver, "width >= 0 AND path LIKE '%0001%'") in ("done", "more")
    paths = result_paths(driver)
    assert paths and all(p.startswith("test/") and "0001" in p for p in paths)
    driver.save_screenshot(str(shots / "filters.png"))
    # Reloading keeps the filters.
    driver.refresh()
    settle(driver)
    assert result_paths(driver) == paths
    mark_stale(driver)
    driver.find_element(By.ID, "f-clear").click()
    settle(driver)
    assert not all(p.startswith("test/") for p in result_paths(driver))
    # Hybrid: the words count too (the detail view shows both scores); sort by date.
    mark_stale(driver)
    driver.find_element(By.ID, "f-hybrid").click()
    settle(driver)
    assert "hybrid=1" in driver.current_url and result_ids(driver)
    driver.find_element(By.CSS_SELECTOR, "#results .card").click()
    wait_for(driver, lambda d: "lexical score" in d.find_element(By.ID, "d-meta").text, "scores")
    driver.find_element(By.ID, "d-close").click()
    mark_stale(driver)
    Select(driver.find_element(By.ID, "f-sort")).select_by_value("mtime")
    settle(driver)
    assert "sort=mtime" in driver.current_url and result_ids(driver)


def test_paging_by_scrolling(driver: Any, server: str) -> None:
    open_page(driver, server + "/?q=a%20large%20green%20star")
    first = result_ids(driver)
    assert len(first) == 24  # one page; the end of the grid is below the fold
    for _ in range(2):
        n = len(result_ids(driver))
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")
        wait_for(driver, lambda d, n=n: len(result_ids(d)) > n, "another page on scrolling")
        settle(driver)
    ids = result_ids(driver)
    assert len(ids) >= 72 and len(ids) == len(set(ids))
    assert ids[:24] == first
    scores = driver.execute_script(
        "return [...document.querySelectorAll('#results .score')].map(s => Number(s.textContent));"
    )
    assert scores == sorted(scores, reverse=True)  # pages continue the ranking


def test_a_superseded_search_is_aborted(driver: Any, server: str) -> None:
    """The first of two quick searches is held back and aborted; only the second one shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(driver, server + "/?q=a%20large%20green%20star")
    expected = result_ids(driver)
    open_page(driver, server + "/")
    # The page's next search request is held until it is aborted; the ones after it go through.
    driver.execute_script(
        """
        const real = window.fetch;
        window.__searches = [];
        window.fetch = (url, opts) => {
          if (!String(url).endsWith('/api/search')) return real(url, opts);
          const call = {body: JSON.parse(opts.body), aborted: false};
          window.__searches.push(call);
          if (window.__searches.length > 1) return real(url, opts);
          return new Promise((_, reject) => opts.signal.addEventListener('abort', () => {
            call.aborted = true;
            reject(new DOMException('aborted', 'AbortError'));
          }));
        };
        """
    )
    box = driver.find_element(By.ID, "q")
    box.send_keys("a small blue square" + Keys.ENTER)
    wait_for(driver, lambda d: d.execute_script("return window.__searches.length") == 1, "search 1")
    assert driver.execute_script("return document.getElementById('results').dataset.state") == (
        "loading"
    )
    box.clear()
    box.send_keys("a large green star" + Keys.ENTER)
    assert settle(driver) in ("done", "more")
    calls = driver.execute_script("return window.__searches")
    assert [c["body"]["text"] for c in calls] == ["a small blue square", "a large green star"]
    assert [c["aborted"] for c in calls] == [True, False]
    assert all(c["body"]["k"] == 24 for c in calls)  # the page asks for its own page size
    assert result_ids(driver) == expected and error_text(driver) is None
    assert page_errors(driver) == []


def test_errors_show_in_one_line(driver: Any, server: str, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, server + "/?q=red")
    assert set_where(driver, "width >= AND (") == "error"
    message = error_text(driver)
    assert message and "WHERE" in message and "\n" not in message
    assert "Traceback" not in message and result_ids(driver) == []
    driver.save_screenshot(str(shots / "error.png"))
    set_where(driver, "")
    # An empty query is refused by the server; the page says so.
    assert type_query(driver, "") == "error"
    assert "empty" in (error_text(driver) or "")
    # An empty result says so.
    type_query(driver, "red")
    assert set_where(driver, "path LIKE '%no such file%'") == "done"
    empty = driver.find_element(By.ID, "empty")
    assert empty.is_displayed() and "No results" in empty.text
    assert error_text(driver) is None


def test_hostile_names_and_captions_are_text(driver: Any, server: str) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, server + "/?q=red%20circle&folder=odd")
    card = driver.find_element(By.CSS_SELECTOR, "#results .card")
    assert card.get_attribute("title") == "odd/" + HOSTILE_NAME
    assert card.find_element(By.CLASS_NAME, "caption").text == HOSTILE_CAPTION
    card.click()
    wait_for(driver, lambda d: d.find_element(By.ID, "d-caption").text == HOSTILE_CAPTION, "detail")
    assert driver.find_element(By.ID, "d-title").text == HOSTILE_NAME
    # Nothing was parsed as HTML: no element came from the data, no script ran.
    assert (
        driver.execute_script(
            "return document.querySelectorAll('#results script, #results b, #detail script,"
            ' #detail b, img[src="x"]\').length;'
        )
        == 0
    )
    assert driver.execute_script("return window.__xss === undefined;")


def test_token_prompt_limits_and_index_picker(
    driver: Any, world: dict[str, Any], tmp_path: Path, shots: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    token = "s3cret-token-for-tests"
    config = ServeConfig(
        indexes={"world": world["index"], "again": world["index"]},
        token=token,
        device="cpu",
        threads=2,
        max_upload_bytes=4096,
    )
    with running(create_app(config)) as url:
        driver.get(url + "/?q=a%20red%20heart")
        auth = driver.find_element(By.ID, "auth")
        wait_for(driver, lambda d: auth.is_displayed(), "the token prompt")
        driver.save_screenshot(str(shots / "token.png"))
        driver.find_element(By.ID, "token").send_keys("wrong-token-123" + Keys.ENTER)
        wait_for(
            driver,
            lambda d: auth.is_displayed() and "refused" in auth.text,
            "the prompt to say the token was refused",
        )
        mark_stale(driver)
        driver.find_element(By.ID, "token").send_keys(token + Keys.ENTER)
        assert settle(driver) in ("done", "more")
        assert not auth.is_displayed()
        assert driver.execute_script("return sessionStorage.getItem('xretrieve.token');") == token
        # <img> cannot send headers: thumbnails carry ?token= and still decode.
        wait_for(driver, lambda d: thumbs_decoded(d, 6), "thumbnails with a token")
        # Two indexes: the picker shows, and picking one searches it.
        picker = driver.find_element(By.ID, "index")
        assert picker.is_displayed()
        assert [o.text for o in Select(picker).options] == ["world", "again"]
        mark_stale(driver)
        Select(picker).select_by_visible_text("again")
        settle(driver)
        assert "index=again" in driver.current_url and len(result_ids(driver)) > 0
        # An oversized upload is refused with a one-line message.
        big = tmp_path / "big.png"
        _noise_png(big, 96)
        assert big.stat().st_size > 4096
        mark_stale(driver)
        driver.find_element(By.ID, "file").send_keys(str(big))
        wait_for(driver, lambda d: error_text(d), "the upload error")
        message = error_text(driver) or ""
        assert "\n" not in message and any(w in message for w in ("limit", "at most")), message
        # A ?token= in the page's own URL is read once, kept, and taken out of the address bar.
        driver.execute_script("sessionStorage.clear();")
        driver.get(url + f"/?q=red&token={token}")
        assert settle(driver) in ("done", "more")
        assert "token=" not in driver.current_url


def _noise_png(path: Path, side: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
