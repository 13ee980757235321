"""Debian's Chromium, driven by selenium (PyPI) through Debian's chromedriver, as a real user of
rollout serve's dashboard.

Usage: dashboard_browser.py SCENARIO_JSON
SCENARIO_JSON names: base (the server's URL), operate_token, read_token, redis_cli (the argv
prefix of a redis-cli reaching the server's Redis), expected ({feature: [status, percent]}),
kill (a feature to kill with redis-cli), pause (a feature to pause with the page's button),
chart (a feature whose chart should show a rollback, or null), screenshot (a PNG path).
Last, it shuts the Redis server down and waits for the page to say so.
Prints one JSON object: what the browser saw at each step. Exits 0 unless the browser or the
driver failed; the test judges what was seen.
"""
import json
import subprocess
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

# Generous bounds: they only end a wait that failed. How long a step took is reported, not judged here.
WAIT = 20


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1100,1400", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


CONTRAST = """
const parse = (text) => {
  const parts = text.match(/rgba?\\(([^)]+)\\)/)[1].split(",").map(Number);
  return {r: parts[0], g: parts[1], b: parts[2], a: parts.length > 3 ? parts[3] : 1};
};
const background = (node) => {
  for (; node; node = node.parentElement) {
    const colour = parse(getComputedStyle(node).backgroundColor);
    if (colour.a > 0) return colour;
  }
  return {r: 255, g: 255, b: 255, a: 1};
};
const luminance = (c) => {
  const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
};
const failures = [];
for (const node of document.querySelectorAll("body *")) {
  if (node.closest("svg") || !node.getClientRects().length) continue;
  const text = Array.from(node.childNodes).filter((child) => child.nodeType === 3).map((child) => child.textContent).join("").trim();
  if (!text) continue;
  const fore = luminance(parse(getComputedStyle(node).color)), back = luminance(background(node));
  const ratio = (Math.max(fore, back) + 0.05) / (Math.min(fore, back) + 0.05);
  if (ratio < 4.5) failures.push(text.slice(0, 40) + ": " + ratio.toFixed(2));
}
return failures;
"""


def rows(driver):
    seen = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "li[data-feature]"):
        seen[row.get_attribute("data-feature")] = [row.get_attribute("data-status"), row.get_attribute("data-percent")]
    return seen


def wait_for(driver, condition, bound=WAIT):
    """Seconds until condition(driver) held, or None when it did not within bound."""
    started = time.monotonic()
    try:
        WebDriverWait(driver, bound, poll_frequency=0.02).until(lambda d: condition(d))
        return round(time.monotonic() - started, 3)
    except TimeoutException:
        return None


def status_of(driver, feature):
    found = driver.find_elements(By.CSS_SELECTOR, f'li[data-feature="{feature}"]')
    return found[0].get_attribute("data-status") if found else None


def main() -> None:
    scenario = json.loads(sys.argv[1])
    base = scenario["base"]
    expected = scenario["expected"]
    report = {}
    driver = browser()
    try:
        # An operator with scope operate opens the bookmark: the token goes into a cookie.
        driver.get(base + "/?token=" + scenario["operate_token"])
        report["url_after_sign_in"] = driver.current_url
        report["cookie"] = driver.get_cookie("rollout_token")
        report["rows_after"] = wait_for(driver, lambda d: rows(d) == {k: v for k, v in expected.items()})
        report["rows"] = rows(driver)
        report["buttons"] = len(driver.find_elements(By.CSS_SELECTOR, "button[data-action]"))

        # A kill switch set with redis-cli reaches the page by itself: no reload.
        wait_for(driver, lambda d: d.find_element(By.ID, "connection").get_attribute("data-connection") == "live")
        driver.execute_script("window.rolloutNoReload = true;")
        kill = scenario["kill"]
        subprocess.run(scenario["redis_cli"] + ["SET", f"flags:{kill}:enabled", "false"], check=True, capture_output=True)
        report["killed_after"] = wait_for(driver, lambda d: status_of(d, kill) == "killed")
        report["not_reloaded"] = driver.execute_script("return window.rolloutNoReload === true;")

        # The pause button asks for a reason, and goes through the operator API.
        pause = scenario["pause"]
        row = driver.find_element(By.CSS_SELECTOR, f'li[data-feature="{pause}"]')
        row.find_element(By.CSS_SELECTOR, 'button[data-action="pause"]').click()
        dialog = driver.find_element(By.ID, "action-dialog")
        report["dialog_open"] = wait_for(driver, lambda d: dialog.get_attribute("open") is not None) is not None
        report["dialog_label"] = driver.find_element(By.CSS_SELECTOR, 'label[for="action-reason"]').text
        driver.find_element(By.ID, "action-reason").send_keys("paused from the dashboard by the browser test")
        driver.find_element(By.ID, "action-confirm").click()
        report["paused_after"] = wait_for(driver, lambda d: status_of(d, pause) == "paused")
        report["dialog_closed"] = dialog.get_attribute("open") is None

        chart = scenario.get("chart")
        if chart:
            report["chart_rollbacks"] = None
            if wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'li[data-feature="{chart}"] .chart svg')) is not None:
                report["chart_rollbacks"] = len(driver.find_elements(By.CSS_SELECTOR, f'li[data-feature="{chart}"] .chart circle.rollback'))
                report["chart_label"] = driver.find_element(By.CSS_SELECTOR, f'li[data-feature="{chart}"] .chart svg').get_attribute("aria-label")

        driver.save_screenshot(scenario["screenshot"])
        # WCAG AA: every visible text at least 4.5:1 against the background it sits on.
        report["contrast_failures"] = driver.execute_script(CONTRAST)
        # On a phone's width nothing runs off the side.
        driver.set_window_size(390, 844)
        report["phone_overflow"] = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth;")
        driver.save_screenshot(scenario["screenshot"].replace(".png", "-phone.png"))
        driver.set_window_size(1100, 1400)
        report["console_errors"] = [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]

        # A read-only token: the same page without buttons, and the API refuses the action.
        driver.delete_all_cookies()
        driver.get(base + "/?token=" + scenario["read_token"])
        report["read_rows_after"] = wait_for(driver, lambda d: len(rows(d)) == len(expected))
        report["read_buttons"] = len(driver.find_elements(By.CSS_SELECTOR, "button[data-action]"))
        driver.set_script_timeout(WAIT)
        report["read_action_status"] = driver.execute_async_script(
            """
            const feature = arguments[0], done = arguments[arguments.length - 1];
            const csrf = document.querySelector('meta[name="rollout-csrf"]').content;
            fetch('/v1/features/' + feature + '/kill', {method: 'POST', credentials: 'same-origin',
              headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}, body: JSON.stringify({reason: 'not allowed'})})
              .then((response) => done(response.status), () => done(-1));
            """, pause)

        # Redis goes away: the page says so by itself (the server's stream reports the
        # snapshot going stale; the page reads again and finds Redis unreachable).
        for key in ("paused", "enabled"):
            report[f"redis_{key}"] = subprocess.run(
                scenario["redis_cli"] + ["GET", f"flags:{pause}:{key}"], check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(scenario["redis_cli"] + ["SHUTDOWN", "NOSAVE"], check=False, capture_output=True)
        report["unreachable_after"] = wait_for(
            driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "unreachable", bound=90)
        report["banner"] = driver.find_element(By.ID, "banner").text
        report["rows_kept"] = len(rows(driver))
    finally:
        driver.quit()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
