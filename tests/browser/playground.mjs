// playground.mjs -- drives the web playground in headless Chromium (Debian's, through
// puppeteer-core): loads the page from a running ddm-router, checks that an API error
// is shown verbatim, submits a job and sees progress, a live preview, the final grid
// and the routing heat map drawn, saves a screenshot, then cancels a long job. With a
// TOKEN (the router runs with --auth-token-file) the page must first show the API's
// 401, then work once the token is typed into its field.
//   node tests/browser/playground.mjs http://127.0.0.1:PORT/ SCREENSHOT.png [TOKEN]
// Exit 0 when everything was seen; 1 with the reason otherwise.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const [url, shot, token] = process.argv.slice(2);
if (!url || !shot) {
  console.error('usage: node tests/browser/playground.mjs URL SCREENSHOT.png');
  process.exit(2);
}
const log = (m) => console.log(`browser: ${m}`);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ddm-chromium-'));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  userDataDir: profile,
  // without the background-networking flags chromium keeps calling out to a network
  // that is not there
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--disable-dev-shm-usage'],
});
const pageErrors = [];
let failed = null;
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(60000);
  await page.setViewport({ width: 1180, height: 980 });
  await page.goto(url, { waitUntil: 'load' });
  const setField = (id, v) => page.$eval(`#${id}`, (el, v) => { el.value = v; el.dispatchEvent(new Event('change')); }, v);
  if (token) { // the page itself is public; the API answers 401 until the token is given
    await page.waitForFunction(() => !document.getElementById('error').hidden);
    const e401 = await page.$eval('#error', (el) => el.textContent);
    if (!e401.includes('HTTP 401') || !e401.includes('unauthorized'))
      throw new Error(`without a token the page should show the API's 401: ${e401}`);
    log('401 shown until a token is given');
    await setField('token', token);
  }
  await page.waitForFunction(() => document.body.dataset.ready === '1');
  const K = await page.evaluate(() => window.ddmPlayground.experts.num_experts);
  log(`page loaded, ${K} experts`);

  // 1. the API's error, verbatim
  await setField('n', '0');
  await page.click('#submit');
  await page.waitForFunction(() => !document.getElementById('error').hidden);
  const err = await page.$eval('#error', (el) => el.textContent);
  if (!err.includes('HTTP 400') || !err.includes('field \\"n\\" = 0 is out of range'))
    throw new Error(`the error is not shown verbatim: ${err}`);
  log('API error shown verbatim');

  // 2. a job: progress, a preview, the final grid, the heat map
  await setField('n', '16');
  await setField('steps', '100');
  await setField('seed', '7');
  await setField('label', '');
  await setField('preview_every', '10');
  await page.click('#submit');
  await page.waitForFunction(() => window.ddmPlayground.steps >= 3);
  log('progress events arrive');
  await page.waitForFunction(() => window.ddmPlayground.previews >= 1);
  log('a preview arrived');
  await page.waitForFunction(() => window.ddmPlayground.status === 'succeeded', { timeout: 120000 });
  const progress = await page.$eval('#progress', (el) => [el.value, el.max]);
  if (progress[0] !== progress[1] || progress[1] < 100) throw new Error(`progress bar at ${progress}`);
  // pixels: the grid has many grey levels; the heat map is not one colour
  const stats = await page.evaluate(() => {
    const spread = (id) => {
      const c = document.getElementById(id);
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const seen = new Set();
      let lit = 0;
      for (let i = 0; i < d.length; i += 4) {
        seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        if (d[i] + d[i + 1] + d[i + 2] > 60) lit++;
      }
      return { colours: seen.size, lit: lit / (d.length / 4) };
    };
    return { result: spread('result'), preview: spread('preview'), heat: spread('heatmap'),
             calls: spread('calls'), callsFinal: window.ddmPlayground.callsFinal };
  });
  log(`canvas colours: result ${stats.result.colours}, preview ${stats.preview.colours}, heat map ${stats.heat.colours}`);
  if (stats.result.colours < 16 || stats.result.lit < 0.05) throw new Error('the final grid is blank');
  if (stats.preview.colours < 16) throw new Error('the preview is blank');
  if (stats.heat.colours < 8) throw new Error('the heat map is blank');
  if (!stats.callsFinal || stats.callsFinal.length !== K) throw new Error('no expert call counts');
  fs.mkdirSync(path.dirname(shot), { recursive: true });
  await page.screenshot({ path: shot, fullPage: true });
  log(`screenshot saved to ${shot}`);

  // 3. a long job, cancelled
  await setField('steps', '1000');
  await setField('preview_every', '50');
  await page.click('#submit');
  await page.waitForFunction(() => window.ddmPlayground.steps >= 3);
  await page.click('#cancel');
  await page.waitForFunction(() => window.ddmPlayground.status === 'cancelled');
  const at = await page.evaluate(() => window.ddmPlayground.steps);
  if (at >= 1000) throw new Error('the job ran to its end');
  log(`long job cancelled after ${at} step events`);
  if (pageErrors.length) throw new Error(`errors in the page: ${pageErrors.join('; ')}`);
} catch (e) {
  failed = e;
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
if (failed) {
  console.error(`browser: FAILED: ${failed.message}`);
  process.exit(1);
}
log('all checks passed');
