"""The page in a real browser: Playwright driving Debian's Chromium against the app on 127.0.0.1."""

import base64
import os
import shutil
import threading

import pytest
from werkzeug.serving import make_server

from conftest import FakeCaptioner, image_bytes
from hf_client import HFClient
from test_images import png_header_only

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI") == "true":
        raise RuntimeError("Chromium is missing: `make test` installs Debian's chromium package")
    pytest.skip("Chromium is not installed (make test installs it)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402  (after the Chromium check)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def serve(make_app, fake_api):
    """Serve an app built by make_app on 127.0.0.1; return its base URL."""
    servers = []

    def start(captioner=None, answerer=None, keys=("hf_browserAAAAAAAA1111",), model="test/sd"):
        app = make_app(captioner, answerer)
        app.extensions["hf_client"] = HFClient(list(keys), model, provider="hf-inference",
                                               router_url=fake_api.url, timeout=5)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()


SIZES = {"desktop": {"viewport": {"width": 1100, "height": 900}},
         "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}}


@pytest.fixture(params=list(SIZES))
def page(browser, request):
    """A fresh browser page, at desktop and at phone size, that records console errors, page errors and CSP
    violations."""
    context = browser.new_context(**SIZES[request.param])
    page = context.new_page()
    page.problems = []
    page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.add_init_script("document.addEventListener('securitypolicyviolation',"
                         " e => console.error('CSP violation: ' + e.violatedDirective))")
    yield page
    context.close()


def shot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)


def files(path, data):
    path.write_bytes(data)
    return str(path)


# Tap targets: on a phone every control a finger uses is at least 44x44 CSS px (WCAG 2.5.5's size, Apple's and
# Material's too). A link inside running text (its parent has text of its own beside it) is excepted, as WCAG
# excepts it; so is anything behind an open modal dialog, which a finger cannot reach. Images the page makes
# clickable (cursor: zoom-in or pointer) count as controls.
TAP_TARGET = 44
CONTROLS = ("a[href], button, input:not([type=hidden]), select, textarea, summary, label:has(> input[type=checkbox]),"
            " label:has(> input[type=radio]), [role=button], [role=link], [role=checkbox], [role=tab],"
            " [tabindex]:not([tabindex^='-'])")


def small_tap_targets(page, size=TAP_TARGET) -> list[str]:
    """Every visible control on the page smaller than size x size CSS px, each as 'what "its text" WxH'."""
    return page.evaluate("""([selector, size]) => {
        const modal = document.querySelector("dialog[open]:modal");
        const root = modal || document.body;
        const clickable = (e) => e.matches(selector) || (e.tagName === "IMG"
            && ["zoom-in", "pointer"].includes(getComputedStyle(e).cursor) && !e.closest(selector));
        const inText = (e) => e.tagName === "A" && [...e.parentElement.childNodes]
            .some((node) => node.nodeType === Node.TEXT_NODE && node.textContent.trim() !== "");
        const named = (e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
            + [...e.classList].map((name) => "." + name).join("") + (e.type ? `[type=${e.type}]` : "")
            + ` "${(e.textContent || e.value || e.alt || "").trim().replace(/\\s+/g, " ").slice(0, 40)}"`;
        return [...root.querySelectorAll("*")]
            .filter((e) => clickable(e) && !inText(e) && e.checkVisibility({visibilityProperty: true}))
            .map((e) => [e, e.getBoundingClientRect()])
            .filter(([, box]) => box.width * box.height > 1)  // not the 1-px visually-hidden kind
            .filter(([, box]) => box.width < size - 0.01 || box.height < size - 0.01)
            .map(([e, box]) => `${named(e)} ${+box.width.toFixed(1)}x${+box.height.toFixed(1)}`);
    }""", [CONTROLS, size])


def is_phone(page) -> bool:
    """Whether the page has a phone's width (the tests' phone is 390 px wide, their desktops 1100 and more)."""
    return page.viewport_size["width"] < 500


def assert_tap_targets(page):
    """On a phone-sized page, fail naming every visible control under 44x44 px; on a desktop, nothing to check."""
    if is_phone(page):
        small = small_tap_targets(page)
        assert small == [], f"controls under {TAP_TARGET}x{TAP_TARGET} px on a phone: {small}"


def upload_through_page(page, path):
    page.set_input_files("#image-input", path)
    with page.expect_response("**/upload") as answer:
        page.click("#upload-form button")
    handled(page, "#upload-form")
    return answer.value


def ask_through_page(page, question):
    page.fill("#question-input", question)
    with page.expect_response("**/question") as answer:
        page.press("#question-input", "Enter")
    handled(page, "#question-form")
    return answer.value.json()


def handled(page, form):
    """Wait until the page has done with an answer (a form sends nothing more while busy)."""
    # A locator, not wait_for_function: that one evaluates a string, which the page's CSP refuses.
    expect(page.locator(f"{form}:not([data-busy])")).to_have_count(1, timeout=10000)


def test_upload_ask_generate_reload_and_reopen(page, serve, tiny_models, tmp_path):
    base = serve(*tiny_models)
    page.goto(base + "/")
    shot(page, "01-empty")
    assert_tap_targets(page)
    photo = files(tmp_path / "photo.png", image_bytes(size=(120, 90), color=(200, 60, 60)))
    page.set_input_files("#image-input", photo)
    expect(page.locator("#preview")).to_be_visible()
    with page.expect_response("**/upload") as answer:
        page.click("#upload-form button")
    caption = answer.value.json()["caption"]
    expect(page.locator("#current-caption")).to_have_text(caption)
    expect(page.locator("#current-image")).to_have_attribute("alt", caption)
    expect(page.locator("#question-input")).to_be_focused()

    first = ask_through_page(page, "what is in the picture?")
    second = ask_through_page(page, "what color is it?")
    thread = page.locator("#thread li")
    expect(thread).to_have_count(2)
    expect(thread.nth(0).locator(".question")).to_have_text("You asked: " + "what is in the picture?")
    expect(thread.nth(0).locator(".answer")).to_have_text("Answer: " + first["answer"])
    expect(thread.nth(1).locator(".question")).to_have_text("You asked: " + "what color is it?")
    expect(thread.nth(1).locator(".answer")).to_have_text("Answer: " + second["answer"])
    expect(page.locator("#question-input")).to_be_focused()
    shot(page, "02-caption-and-thread")
    assert_tap_targets(page)

    page.fill("#description-input", "a lighthouse at dusk")
    page.fill("#width-input", "512")
    page.click("summary")
    page.fill("#seed-input", "42")
    with page.expect_response("**/generate") as generated:
        page.click("#generate-form button")
    body = generated.value.json()
    expect(page.locator("#generated-image")).to_be_visible()
    assert page.locator("#generated-path").count() == 0 and body["path"] not in page.inner_text("#generated")
    expect(page.locator("#generated-download")).to_have_attribute("href", body["image_url"])
    shot(page, "03-generated")
    assert_tap_targets(page)

    page.reload()
    expect(page.locator("#image-gallery li")).to_have_count(1)
    expect(page.locator("#generation-gallery li a[data-lightbox] span")).to_have_text("a lighthouse at dusk")
    expect(page.locator("#image-panel")).to_be_visible()  # the address keeps the open image
    page.click("#image-gallery a[data-image-id]")
    expect(page.locator("#current-caption")).to_have_text(caption)
    expect(page.locator("#current-image")).to_be_in_viewport()  # reopened where it can be seen
    expect(page.locator("#thread li")).to_have_count(2)
    shot(page, "04-history-reopened")
    assert_tap_targets(page)
    assert page.problems == []


def test_dropping_a_file_on_the_page_picks_it(page, serve):
    page.goto(serve() + "/")
    dropped = page.evaluate_handle("""bytes => {
        const files = new DataTransfer();
        files.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
        return files;
    }""", list(image_bytes()))
    page.dispatch_event("main", "drop", {"dataTransfer": dropped})
    expect(page.locator("#preview")).to_be_visible()
    assert page.evaluate("document.querySelector('#image-input').files[0].name") == "dropped.png"
    with page.expect_response("**/upload") as answer:
        page.click("#upload-form button")
    assert answer.value.status == 201
    expect(page.locator("#current-caption")).to_have_text("a fake caption")
    assert page.problems == []


def test_load_more_pages_the_gallery(page, serve, tmp_path):
    base = serve()
    photo = files(tmp_path / "a.png", image_bytes())
    page.goto(base + "/")
    for _ in range(14):
        upload_through_page(page, photo)
    page.reload()
    expect(page.locator("#image-gallery li")).to_have_count(12)
    assert_tap_targets(page)  # with "Load more"
    page.click("a.more[data-kind=images]")
    expect(page.locator("#image-gallery li")).to_have_count(14)
    expect(page.locator("a.more[data-kind=images]")).to_have_count(0)
    assert page.problems == []


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("cut.png", image_bytes(size=(120, 90), color=(10, 200, 30))[:-30], "That image is damaged"),
        ("huge.png", png_header_only(20000, 20000), "That image has too many pixels"),
    ],
    ids=["damaged", "too-many-pixels"],
)
def test_the_servers_upload_error_is_shown_beside_the_form(page, serve, tmp_path, name, data, message):
    page.goto(serve() + "/")
    answer = upload_through_page(page, files(tmp_path / name, data))
    expect(page.locator("#upload-form .error")).to_contain_text(message)
    # The API's words stay in the API.
    assert answer.json()["error"] not in page.locator("#upload-form .error").inner_text()
    expect(page.locator("#upload-form button")).to_be_enabled()
    shot(page, f"05-upload-error-{name}")
    assert_tap_targets(page)


def refused_before_sending(page, path) -> str:
    """Choose a file and press Upload; return what the page says, having checked that nothing was sent."""
    sent = []
    page.on("request", lambda request: request.url.endswith("/upload") and sent.append(request))
    error = page.locator("#upload-form .error")
    page.set_input_files("#image-input", path)
    expect(error).not_to_be_empty()  # said as soon as it is chosen
    chosen = error.inner_text()
    page.evaluate("document.querySelector('#upload-form .error').textContent = ''")
    page.click("#upload-form button")
    expect(error).to_have_text(chosen)  # said again by Upload, which has then decided not to send
    expect(page.locator("#preview")).to_be_hidden()
    assert sent == []
    return chosen


def test_a_file_over_16_mb_is_stopped_before_sending(page, serve, tmp_path):
    page.goto(serve() + "/")
    big = files(tmp_path / "big.jpg", b"\xff\xd8\xff" + b"\0" * (17 * 1024 * 1024))
    assert "larger than 16 MB" in refused_before_sending(page, big)


# The content decides, not the name: what a file's first bytes say it is.
HEIC = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"


@pytest.mark.parametrize("name, fmt", [("photo.jfif", "JPEG"), ("IMG_0001.HEIC", "JPEG"), ("scan", "PNG")])
def test_a_png_or_jpeg_is_taken_whatever_its_name(page, serve, tmp_path, name, fmt):
    page.goto(serve() + "/")
    path = files(tmp_path / name, image_bytes(fmt, size=(60, 40), color=(200, 120, 40)))
    page.set_input_files("#image-input", path)
    expect(page.locator("#preview")).to_be_visible()
    answer = upload_through_page(page, path)
    assert answer.status == 201 and answer.json()["mime_type"] == f"image/{fmt.lower()}"
    expect(page.locator("#current-caption")).to_have_text("a fake caption")
    expect(page.locator("#upload-form .error")).to_be_empty()
    expect(page.locator("#image-gallery small").first).to_contain_text(name)
    assert page.problems == []


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("picture.png", image_bytes("GIF", "P"), '"picture.png" is a GIF image, which cannot be captioned here.'),
        ("photo.jpg", HEIC, '"photo.jpg" is a HEIC/HEIF image, which cannot be captioned here.'),
        ("notes.png", b"just some notes", '"notes.png" is not a PNG or JPEG image.'),
        ("bmw.png", b"BMW owners' notes, not a bitmap", '"bmw.png" is not a PNG or JPEG image.'),
        ("scan.png", image_bytes("BMP"), '"scan.png" is a BMP image, which cannot be captioned here.'),
    ],
    ids=["gif-named-png", "heic-named-jpg", "text-named-png", "text-starting-bm", "bmp-named-png"],
)
def test_another_format_is_named_before_sending(page, serve, tmp_path, name, data, message):
    page.goto(serve() + "/")
    said = refused_before_sending(page, files(tmp_path / name, data))
    assert said.startswith(message)
    assert "PNG or JPEG" in said
    shot(page, f"05-refused-{name}")
    assert_tap_targets(page)


def test_a_503_from_generate_is_shown(page, serve):
    page.goto(serve(keys=()) + "/")
    page.fill("#description-input", "a cat")
    page.click("#generate-form button")
    expect(page.locator("#generate-form .error")).to_have_text("Drawing images is not set up on this server yet.")
    shot(page, "06-generate-error")
    assert_tap_targets(page)


def test_the_page_sends_only_what_the_drawing_model_takes(page, serve, fake_api):
    # FLUX.1-schnell: 1 to 4 steps (blank for the provider's default) and no guidance, so those fields are off.
    page.goto(serve(model="black-forest-labs/FLUX.1-schnell") + "/")
    expect(page.locator("label[for=steps-input]")).to_have_text("Steps (1 to 4)")
    page.click("summary")
    for field in ("#guidance-input", "#negative-input"):
        expect(page.locator(field)).to_be_disabled()
    expect(page.locator("#unused-settings")).to_be_visible()
    page.fill("#description-input", "a boat")
    with page.expect_response("**/generate") as answer:
        page.click("#generate-form button[type=submit]")
    assert answer.value.status == 201
    expect(page.locator("#generated-image")).to_be_visible()
    [sent] = fake_api.requests
    assert sent["path"] == "/hf-inference/models/black-forest-labs/FLUX.1-schnell"
    assert set(sent["body"]["parameters"]) <= {"width", "height", "seed"}
    assert_tap_targets(page)


def test_markup_in_captions_and_questions_is_shown_as_text(page, serve, tmp_path):
    class MarkupCaptioner(FakeCaptioner):
        def caption_batch(self, images, prompt=None):
            return ["<script>window.pwned = 1</script><img src=x onerror=window.pwned=2>"] * len(images)

    base = serve(captioner=MarkupCaptioner())
    page.goto(base + "/")
    upload_through_page(page, files(tmp_path / "a.png", image_bytes()))
    expect(page.locator("#current-caption")).to_have_text(MarkupCaptioner().caption_batch([None])[0])
    ask_through_page(page, "<script>window.pwned = 3</script>?")
    expect(page.locator("#thread .question")).to_have_text("You asked: " + "<script>window.pwned = 3</script>?")
    page.reload()
    markup = MarkupCaptioner().caption_batch([None])[0]
    expect(page.locator("#image-gallery a[data-image-id] span")).to_have_text(markup)
    page.click("#image-gallery a[data-image-id]")
    expect(page.locator("#thread .question")).to_have_text("You asked: " + "<script>window.pwned = 3</script>?")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#image-gallery img[src=x]").count() == 0


def test_keyboard_only(page, serve, tmp_path):
    # A listener from the start turns on Playwright's file chooser interception before any key is
    # pressed; turned on only by expect_file_chooser, it can lag behind the key press.
    page.on("filechooser", lambda chooser: None)
    page.goto(serve() + "/")
    page.bring_to_front()
    photo = files(tmp_path / "k.png", image_bytes())
    page.keyboard.press("Tab")  # the title link
    page.keyboard.press("Tab")
    expect(page.locator("#image-input")).to_be_focused()
    with page.expect_file_chooser(timeout=5000) as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(photo)
    page.keyboard.press("Tab")
    expect(page.locator("#prompt-input")).to_be_focused()
    page.keyboard.press("Tab")
    with page.expect_response("**/upload"):
        page.keyboard.press("Enter")
    expect(page.locator("#question-input")).to_be_focused()
    page.keyboard.type("is it red?")
    with page.expect_response("**/question"):
        page.keyboard.press("Enter")
    expect(page.locator("#thread li")).to_have_count(1)
    while not page.evaluate("document.activeElement.id === 'description-input'"):
        page.keyboard.press("Tab")
    page.keyboard.type("a boat")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator("#steps-input")).to_be_focused()
    with page.expect_response("**/generate"):
        page.keyboard.press("Enter")
    expect(page.locator("#generated-image")).to_be_visible()
    expect(page.locator("#generated")).to_be_focused()  # not lost to the page while the button was disabled
    while not page.evaluate("document.activeElement.matches('#image-gallery a[data-image-id]')"):
        page.keyboard.press("Tab")
    with page.expect_response("**/images/*"):
        page.keyboard.press("Enter")  # reopen from the history
    expect(page.locator("#question-input")).to_be_focused()
    expect(page.locator("#thread li")).to_have_count(1)
    assert page.problems == []


def test_phone_width_has_no_horizontal_scroll(browser, serve, tiny_models, tmp_path):
    context = browser.new_context(viewport={"width": 375, "height": 800}, is_mobile=True)
    page = context.new_page()
    page.goto(serve(*tiny_models) + "/")
    upload_through_page(page, files(tmp_path / "wide.png", image_bytes(size=(1600, 400))))
    ask_through_page(page, "a long question " * 10)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    shot(page, "07-phone")
    context.close()


def test_without_javascript_upload_and_question_still_work(browser, serve, tmp_path):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(serve() + "/")
    page.set_input_files("#image-input", files(tmp_path / "plain.png", image_bytes()))
    page.click("#upload-form button")
    expect(page.locator("#current-caption")).to_have_text("a fake caption")
    page.fill("#question-input", "plain question?")
    page.click("#question-form button")
    expect(page.locator("#thread .question")).to_have_text("You asked: " + "plain question?")
    expect(page.locator("#thread .answer")).to_have_text("Answer: " + "a fake answer")
    shot(page, "08-no-javascript")
    page.goto(page.url.split("/page/")[0] + "/")
    expect(page.locator("#image-gallery li")).to_have_count(1)
    context.close()


# Accessibility: axe-core (from npm, `make test` installs it) run inside the page, in every main state.

AXE = os.path.join(os.path.dirname(ARTIFACTS), "node_modules", "axe-core", "axe.min.js")


def axe_violations(page) -> list[dict]:
    """axe-core's violations of any impact on the page as it is now."""
    if not os.path.exists(AXE):
        if os.environ.get("CI") == "true":
            raise RuntimeError("axe-core is missing: `make test` installs it with npm")
        pytest.skip("axe-core is not installed (make test installs it with npm)")
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(path=AXE)
    return page.evaluate("""async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
        .map((v) => ({id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" "))}))""")


@pytest.fixture(params=[(1280, 800), (390, 844)], ids=["desktop", "phone"])
def audited(browser, request):
    """A page whose CSP lets axe-core in (the app's own CSP rightly refuses injected scripts)."""
    width, height = request.param
    context = browser.new_context(viewport={"width": width, "height": height}, bypass_csp=True,
                                  is_mobile=width < 500)
    page = context.new_page()
    page.size_name = "phone" if width < 500 else "desktop"
    yield page
    context.close()


def test_axe_finds_no_violations_in_any_state(audited, serve, tiny_models, tmp_path):
    """axe-core, and on a phone the 44-px tap targets, in every main state."""
    page = audited
    found, small = {}, {}

    def audit(state):
        found[state] = axe_violations(page)
        small[state] = small_tap_targets(page) if is_phone(page) else []

    page.goto(serve(*tiny_models) + "/")
    audit("empty")
    for index in range(2):
        upload_through_page(page, files(tmp_path / f"p{index}.png", image_bytes(color=(40 * index, 90, 160))))
    page.fill("#description-input", "a lighthouse at dusk")
    with page.expect_response("**/generate"):
        page.click("#generate-form button")
    expect(page.locator("#generated-image")).to_be_visible()
    audit("with images")
    for index in range(14):
        ask_through_page(page, f"question number {index}, long enough to wrap on a phone screen?")
    assert page.evaluate("(() => { const t = document.querySelector('#thread'); "
                         "return t.scrollHeight > t.clientHeight; })()")
    audit("thread overflowing")
    page.click("#generation-gallery li a[data-lightbox]")
    expect(page.locator("#lightbox")).to_be_visible()
    audit("lightbox open")
    page.click("#lightbox button")
    upload_through_page(page, files(tmp_path / "huge.png", png_header_only(20000, 20000)))  # the server says why
    page.fill("#question-input", " ")
    page.click("#question-form button")
    expect(page.locator("#upload-form .error")).not_to_be_empty()
    audit("errors")
    page.reload()
    audit("history after reload")
    shot(page, f"08-audited-{page.size_name}")
    assert {state: violations for state, violations in found.items() if violations} == {}
    assert {state: controls for state, controls in small.items() if controls} == {}


def test_results_are_announced_once_each(page, serve, tiny_models, tmp_path):
    page.goto(serve(*tiny_models) + "/")
    response = upload_through_page(page, files(tmp_path / "a.png", image_bytes()))
    expect(page.locator("#announcer")).to_have_text(f"Caption: {response.json()['caption']}")
    answer = ask_through_page(page, "what is it?")
    expect(page.locator("#announcer")).to_have_text(f"Answer: {answer['answer']}")
    page.fill("#description-input", "a boat")
    with page.expect_response("**/generate"):
        page.click("#generate-form button")
    expect(page.locator("#announcer")).to_have_text("Image ready")
    assert page.locator("#thread .question .visually-hidden").first.text_content() == "You asked: "
    assert page.locator("#thread .answer .visually-hidden").first.text_content() == "Answer: "


def test_the_generation_clock_is_not_read_out_every_second(page, serve):
    page.goto(serve() + "/")
    page.route("**/generate", lambda route: None)  # held: the clock keeps running
    page.fill("#description-input", "a boat")
    page.click("#generate-form button")
    busy = page.locator("#generate-form .busy")
    expect(busy).to_contain_text("Generating")
    assert busy.locator("[aria-hidden=true]").count() == 1  # the seconds, hidden from the live region


def test_load_more_keeps_the_focus_on_the_new_items(page, serve, tmp_path):
    base = serve()
    page.goto(base + "/")
    for index in range(14):
        upload_through_page(page, files(tmp_path / f"m{index}.png", image_bytes(color=(index * 15, 0, 0))))
    page.reload()
    page.focus("a.more[data-kind=images]")
    with page.expect_response("**/history*"):
        page.keyboard.press("Enter")
    expect(page.locator("#image-gallery li")).to_have_count(14)
    assert page.evaluate("document.activeElement.closest('#image-gallery li') === "
                         "document.querySelectorAll('#image-gallery li')[12]")


def test_the_tap_target_check_names_small_controls_and_spares_links_in_text(browser, serve):
    context = browser.new_context(**SIZES["phone"])
    page = context.new_page()
    page.goto(serve() + "/")
    assert_tap_targets(page)
    page.evaluate("""() => {
        const small = Object.assign(document.createElement("a"), {href: "#", className: "tiny", textContent: "Tiny"});
        const sentence = document.createElement("p");
        const link = Object.assign(document.createElement("a"), {href: "#", textContent: "this"});
        sentence.append("Read ", link, " first.");
        document.querySelector("main").append(small, sentence);
    }""")
    assert [target.split(" ")[0] for target in small_tap_targets(page)] == ["a.tiny"]
    context.close()


# Words for people, and a history people can manage.

def test_a_long_paste_into_the_question_is_counted_not_cut(page, serve, tmp_path):
    page.goto(serve() + "/")
    upload_through_page(page, files(tmp_path / "a.png", image_bytes()))
    page.fill("#question-input", "x" * 2000)
    expect(page.locator("#question-count")).to_have_text("2000 of 500 characters")
    expect(page.locator("#question-form .error")).to_contain_text("yours has 2000")
    sent = []
    page.on("request", lambda request: request.url.endswith("/question") and sent.append(request))
    page.click("#question-form button")
    assert page.input_value("#question-input") == "x" * 2000 and sent == []
    page.fill("#question-input", "short?")
    expect(page.locator("#question-form .error")).to_be_empty()  # the old message goes with its cause


def test_a_png_that_will_not_decode_is_called_out_at_once(page, serve, tmp_path):
    page.goto(serve() + "/")
    page.set_input_files("#image-input", files(tmp_path / "broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40))
    expect(page.locator("#upload-form .error")).to_contain_text("not an image we can read")
    expect(page.locator("#preview")).to_be_hidden()


def test_after_an_upload_the_form_is_ready_for_the_next(page, serve, tmp_path):
    page.goto(serve() + "/")
    upload_through_page(page, files(tmp_path / "a.png", image_bytes()))
    expect(page.locator("#current-caption")).not_to_be_empty()  # the answer has been handled
    assert page.evaluate("document.querySelector('#image-input').files.length") == 0
    expect(page.locator("#preview")).to_be_hidden()


def test_the_open_image_survives_a_reload_and_items_say_what_and_when(page, serve, tmp_path):
    page.goto(serve() + "/")
    body = upload_through_page(page, files(tmp_path / "holiday.png", image_bytes())).json()
    assert page.evaluate("location.hash") == f"#image={body['image_id']}"
    ask_through_page(page, "still here?")
    page.reload()
    expect(page.locator("#image-panel")).to_be_visible()
    expect(page.locator("#thread li")).to_have_count(1)
    item = page.locator("#image-gallery li").first
    expect(item.locator("small")).to_contain_text("holiday.png")
    expect(item.locator("time")).to_have_attribute("datetime", body["created_at"])


def test_history_errors_do_not_pile_up(page, serve, tmp_path):
    page.goto(serve() + "/")
    upload_through_page(page, files(tmp_path / "a.png", image_bytes()))
    page.route("**/images/*", lambda route: route.abort())
    for _ in range(3):
        page.click("#image-gallery a[data-image-id]")
        expect(page.locator(".gallery-error")).to_contain_text("could not be reached")
    assert page.locator("#history .error").count() == 1
    page.unroute("**/images/*")
    page.click("#image-gallery a[data-image-id]")
    expect(page.locator(".gallery-error")).to_be_empty()


def test_deleting_from_the_page_asks_first(page, serve, tmp_path, data_dir):
    page.goto(serve() + "/")
    body = upload_through_page(page, files(tmp_path / "a.png", image_bytes())).json()
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#delete-image")
    expect(page.locator("#image-gallery li a[data-image-id]")).to_have_count(1)  # "Cancel" keeps it
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(f"**/images/{body['image_id']}"):
        page.click("#delete-image")
    expect(page.locator("#image-panel")).to_be_hidden()
    expect(page.locator("#image-gallery .empty")).to_be_visible()
    expect(page.locator("#announcer")).to_have_text("Image deleted")
    assert not (data_dir / "uploads" / body["image_url"].rsplit("/", 1)[1]).exists()
    assert page.evaluate("location.hash") == ""


def test_a_generation_and_then_the_whole_history_are_deleted_from_the_page(page, serve, tmp_path, data_dir):
    page.goto(serve() + "/")
    upload_through_page(page, files(tmp_path / "a.png", image_bytes()))
    for description in ("a boat", "a cat"):
        page.fill("#description-input", description)
        with page.expect_response("**/generate"):
            page.click("#generate-form button")
    page.on("dialog", lambda dialog: dialog.accept())
    with page.expect_response("**/generations/*"):
        page.click("#generation-gallery li button.delete-generation >> nth=0")
    expect(page.locator("#generation-gallery li a[data-lightbox]")).to_have_count(1)
    with page.expect_response("**/history"):
        page.click("#clear-history")
    expect(page.locator("#image-gallery .empty")).to_be_visible()
    expect(page.locator("#generation-gallery .empty")).to_be_visible()
    page.reload()
    expect(page.locator("#image-gallery .empty")).to_be_visible()
    assert [p for p in (data_dir / "uploads").rglob("*.png")] == []


# What people expect from such tools.

def test_several_files_at_once_each_captioned(page, serve, tmp_path):
    page.goto(serve() + "/")
    paths = [files(tmp_path / f"s{index}.png", image_bytes(color=(index * 60, 20, 20))) for index in range(3)]
    page.set_input_files("#image-input", paths)
    with page.expect_response(lambda response: response.url.endswith("/upload")):
        page.click("#upload-form button")
    expect(page.locator("#image-gallery li a[data-image-id]")).to_have_count(3)
    expect(page.locator("#image-gallery small").first).to_contain_text("s2.png")


def test_a_pasted_image_is_taken(page, serve):
    page.goto(serve() + "/")
    data = base64.b64encode(image_bytes()).decode()
    page.evaluate("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], "clip.png", {type: "image/png"}));
        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: files, bubbles: true}));
    }""", data)
    expect(page.locator("#announcer")).to_have_text("Image pasted")
    with page.expect_response("**/upload"):
        page.click("#upload-form button")
    expect(page.locator("#image-gallery li a[data-image-id]")).to_have_count(1)


def test_copy_a_caption_and_an_answer(browser, serve, tmp_path):
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(serve() + "/")
    upload_through_page(page, files(tmp_path / "a.png", image_bytes()))
    page.click("#copy-caption")
    expect(page.locator("#announcer")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "a fake caption"
    ask_through_page(page, "what?")
    page.evaluate("document.querySelector('#announcer').textContent = ''")
    page.click("#thread li button.copy")
    expect(page.locator("#announcer")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "a fake answer"
    context.close()


def test_images_open_large_in_the_app_and_download_from_the_gallery(page, serve, tmp_path):
    page.goto(serve() + "/")
    upload_through_page(page, files(tmp_path / "a.png", image_bytes()))
    page.fill("#description-input", "a boat")
    with page.expect_response("**/generate"):
        page.click("#generate-form button")
    page.click("#current-image")
    expect(page.locator("#lightbox")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#lightbox")).to_be_hidden()
    address = page.url
    page.click("#generation-gallery li a[data-lightbox]")
    expect(page.locator("#lightbox img")).to_have_attribute("alt", "a boat")
    assert page.url == address  # not a bare PNG
    assert_tap_targets(page)  # the lightbox's Close
    shot(page, "10-lightbox")
    page.click("#lightbox button")
    for item in ("#image-gallery li", "#generation-gallery li"):
        link = page.locator(f"{item} a.download").first
        assert link.get_attribute("download") == "" and link.get_attribute("href").endswith(".png")


def test_ctrl_enter_sends_and_the_settings_are_remembered(page, serve):
    page.goto(serve() + "/")
    page.fill("#width-input", "512")
    page.click("summary")
    page.fill("#seed-input", "7")
    page.fill("#description-input", "a boat")
    with page.expect_response("**/generate") as sent:
        page.press("#description-input", "Control+Enter")
    assert sent.value.request.post_data_json["width"] == "512"
    expect(page.locator("#width-input")).to_have_value("512")  # the settings stay
    page.reload()
    expect(page.locator("#width-input")).to_have_value("512")  # and are remembered
    expect(page.locator("#seed-input")).to_have_value("7")


def test_a_running_generation_can_be_cancelled(page, serve):
    page.goto(serve() + "/")
    page.route("**/generate", lambda route: None)  # never answers
    page.fill("#description-input", "a boat")
    page.click("#generate-form button")
    expect(page.locator("#cancel-generate")).to_be_visible()
    assert_tap_targets(page)
    page.click("#cancel-generate")
    expect(page.locator("#generate-form .error")).to_contain_text("Cancelled")
    expect(page.locator("#generate-form button[type=submit]")).to_be_enabled()
    expect(page.locator("#cancel-generate")).to_be_hidden()


@pytest.mark.parametrize("size", list(SIZES))
def test_dark_mode_follows_the_system_and_stays_readable(browser, serve, tmp_path, size):
    context = browser.new_context(color_scheme="dark", bypass_csp=True, **SIZES[size])
    page = context.new_page()
    page.goto(serve() + "/")
    upload_through_page(page, files(tmp_path / "a.png", image_bytes()))
    ask_through_page(page, "what?")
    background = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    assert background == "rgb(17, 20, 24)"
    assert axe_violations(page) == []
    assert_tap_targets(page)
    shot(page, f"09-dark-{size}")
    context.close()


def test_the_image_page_shows_only_buttons_that_work_there(page, serve, tmp_path):
    page.goto(serve() + "/")
    body = upload_through_page(page, files(tmp_path / "a.png", image_bytes())).json()
    page.goto(page.url.split("#")[0].rstrip("/") + f"/page/images/{body['image_id']}")
    expect(page.locator("#copy-caption")).to_be_visible()
    expect(page.locator("#delete-image")).to_be_hidden()  # deleting is done from the main page
    assert_tap_targets(page)
