"""The chat page at / in a real headless browser (Debian's chromium through chromedriver, which
scripts/test.sh installs): it streams greedy answers equal to the API's, keeps the conversation,
shows tokens/s, and reads acceptance and SSD hit rate off /metrics; with an API key, / stays
open and the page sends the key it is given."""

from __future__ import annotations

import shutil

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from live_server import metric, start_server

WAIT_S = 30
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def browser():
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver is missing: run scripts/test.sh (as root it apt-installs chromium-driver)"
    options = webdriver.ChromeOptions()
    # --no-sandbox: CI runs as root, where chromium refuses its sandbox.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    chromium = shutil.which("chromium")
    if chromium:
        options.binary_location = chromium
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def text_of(driver, css: str) -> list[str]:
    """textContent (not Selenium's .text, which folds whitespace) of each element matching css."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent)", css)


def ask(driver, message: str) -> str:
    """Type a message, send it, wait for the answer to finish streaming; the answer's text."""
    answered = len(text_of(driver, ".msg.assistant"))
    box = driver.find_element(By.ID, "message")
    box.send_keys(message)
    driver.find_element(By.ID, "send").click()
    wait = WebDriverWait(driver, WAIT_S)
    wait.until(lambda d: len(text_of(d, ".msg.assistant")) > answered)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")
    assert not text_of(driver, ".msg.error"), text_of(driver, ".msg.error")
    return text_of(driver, ".msg.assistant")[-1]


def api_answer(url: str, messages: list[dict], headers=None) -> str:
    r = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=60,
                   json={"messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_page_streams_greedy_answers_and_keeps_the_conversation(live, browser):
    browser.get(f"{live.url}/?temperature=0&max_tokens={MAX_TOKENS}")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "model").text == "tiny")
    assert browser.find_element(By.ID, "key-field").is_displayed() is False

    first = ask(browser, "hello there")
    assert first and first == api_answer(live.url, [{"role": "user", "content": "hello there"}])
    tps = browser.find_element(By.ID, "tps").text
    assert float(tps) > 0
    assert int(browser.find_element(By.ID, "tokens").text) > 0
    assert browser.find_element(By.ID, "acceptance").text == "–"  # AR: no drafts
    assert browser.find_element(By.ID, "hit-rate").text == "–"

    # The second turn carries the first: its answer is the API's for the whole conversation.
    second = ask(browser, "and again")
    conversation = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "and again"}]
    assert second == api_answer(live.url, conversation)
    assert text_of(browser, ".msg.user") == ["hello there", "and again"]


@pytest.fixture(scope="module")
def ssd_keyed():
    """An SSD server on two random models that share a bigram core (drafts are sometimes
    accepted), behind an API key."""
    import torch

    from saguaro import Engine
    from saguaro.server.app import create_app

    torch.set_num_threads(1)
    engine = Engine("random:tiny:0:agree=0.1", "random:tiny:1:agree=0.1", "ssd", dtype="float32", threads=1,
                    max_batch=2, k=2, fanout=1)
    server, thread, url = start_server(create_app(engine, model_name="spec", api_key="sekret", shutdown_timeout=5))
    yield url
    server.should_exit = True
    thread.join(30)


def test_page_with_an_api_key_and_speculation_rates(ssd_keyed, browser):
    url, key = ssd_keyed, {"Authorization": "Bearer sekret"}
    assert httpx.get(url + "/").status_code == 200  # the page itself needs no key
    assert httpx.get(url + "/v1/models").status_code == 401
    browser.get(f"{url}/?temperature=0&max_tokens={MAX_TOKENS}")
    field = browser.find_element(By.ID, "api-key")
    WebDriverWait(browser, WAIT_S).until(lambda d: field.is_displayed())
    field.send_keys("sekret")
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "model").text == "spec")

    answer = ask(browser, "hello world")
    # The page's request is the only one so far, so the counters' totals are its deltas.
    page = httpx.get(url + "/metrics", headers=key).text
    accepted = metric(page, "saguaro:spec_decode_num_accepted_tokens_total")
    drafted = metric(page, "saguaro:spec_decode_num_draft_tokens_total")
    hits, misses = metric(page, "saguaro:ssd_cache_hits_total"), metric(page, "saguaro:ssd_cache_misses_total")
    assert drafted > 0 and hits + misses > 0
    assert browser.find_element(By.ID, "acceptance").text == f"{accepted / drafted * 100:.1f}%"
    assert browser.find_element(By.ID, "hit-rate").text == f"{hits / (hits + misses) * 100:.1f}%"
    assert answer == api_answer(url, [{"role": "user", "content": "hello world"}], headers=key)
