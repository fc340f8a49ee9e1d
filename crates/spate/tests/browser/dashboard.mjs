// Opens Spate's dashboard in headless chromium and checks what a user sees:
//   node dashboard.mjs ADMIN_URL OUT_DIR BROKER TRIGGER... -- EVENT_ID
// Prints "READY" once the topology lists the broker and every trigger; then waits
// for EVENT_ID (sent by the test) to appear in the live view. Screenshots go to OUT_DIR.
import { chromium } from "playwright-core";

const [admin, out, ...rest] = process.argv.slice(2);
const sep = rest.indexOf("--");
const names = rest.slice(0, sep), eventId = rest[sep + 1];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
let failed = false;
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.on("console", (m) => { if (m.type() === "error") console.error("page error:", m.text()); });
page.on("pageerror", (e) => { console.error("page exception:", e.message); failed = true; });
try {
  await page.goto(admin + "/");
  for (const n of names) {
    await page.locator("#topology .node", { hasText: n }).first().waitFor({ timeout: 20000 });
  }
  await page.screenshot({ path: `${out}/dashboard-topology.png`, fullPage: true });
  console.log("READY");
  await page.locator(`#events [data-id="${eventId}"]`).first().waitFor({ timeout: 20000 });
  // The resource view: conditions and manifest of the first trigger.
  await page.locator("#topology .node", { hasText: names[1] }).first().click();
  await page.locator("#detail-body pre").waitFor({ timeout: 5000 });
  const detail = await page.locator("#detail-body").innerText();
  if (!detail.includes("Ready")) throw new Error("the resource view shows no Ready condition: " + detail.slice(0, 200));
  await page.screenshot({ path: `${out}/dashboard-live.png`, fullPage: true });
  console.log("SEEN " + eventId);
} catch (e) {
  console.error("dashboard check failed:", e.message);
  await page.screenshot({ path: `${out}/dashboard-failure.png`, fullPage: true }).catch(() => {});
  failed = true;
}
await browser.close();
process.exit(failed ? 1 : 0);
