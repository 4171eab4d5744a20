// styleq dashboard: what every page shares. Plain JavaScript, no build step.
//
// Pages are rendered on the server. Parts marked `data-live` are refreshed in place: the page is
// fetched again and each such part is patched node by node (rows matched by `data-key`), so what
// has not changed, and the keyboard focus inside it, stays as it was.
(function () {
  "use strict";

  const CSRF_HEADER = { "X-Requested-With": "styleq-dashboard" };

  function localizeTimes(root) {
    const today = new Date().toDateString();
    for (const element of root.querySelectorAll("time[datetime]")) {
      const date = new Date(element.getAttribute("datetime"));
      if (Number.isNaN(date.getTime())) continue;
      element.textContent = date.toDateString() === today
        ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false })
        : date.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hour12: false });
      element.title = date.toLocaleString();
    }
  }

  // The Content-Security-Policy refuses style attributes in the markup, so a bar's width comes as
  // `data-fill` (a percentage) and is set here, through the DOM, which the policy allows.
  function applyFills(root) {
    for (const element of root.querySelectorAll("[data-fill]")) {
      const width = `${element.getAttribute("data-fill")}%`;
      if (element.style.width !== width) element.style.width = width;
    }
  }

  function keyOf(node) {
    return node.nodeType === Node.ELEMENT_NODE ? node.getAttribute("data-key") : null;
  }

  // Make the live node `current` look like `fresh` (a node of another document), touching only what differs.
  function morph(current, fresh) {
    if (current.nodeType !== fresh.nodeType || current.nodeName !== fresh.nodeName || keyOf(current) !== keyOf(fresh)) {
      current.replaceWith(document.importNode(fresh, true));
      return;
    }
    if (current.nodeType !== Node.ELEMENT_NODE) {
      if (current.nodeValue !== fresh.nodeValue) current.nodeValue = fresh.nodeValue;
      return;
    }
    if (current.isEqualNode(fresh)) return;
    for (const attribute of Array.from(current.attributes)) {
      // `style` is set by scripts (applyFills), never sent by the server: keep it, or a bar would jump.
      if (attribute.name !== "style" && !fresh.hasAttribute(attribute.name)) current.removeAttribute(attribute.name);
    }
    for (const attribute of Array.from(fresh.attributes)) {
      if (current.getAttribute(attribute.name) !== attribute.value) current.setAttribute(attribute.name, attribute.value);
    }
    if (current.hasAttribute("data-keyed")) morphKeyed(current, fresh);
    else morphChildren(current, fresh);
  }

  function morphChildren(current, fresh) {
    const old = Array.from(current.childNodes);
    const wanted = Array.from(fresh.childNodes);
    wanted.forEach((node, index) => {
      if (index < old.length) morph(old[index], node);
      else current.appendChild(document.importNode(node, true));
    });
    for (const extra of old.slice(wanted.length)) extra.remove();
  }

  function morphKeyed(current, fresh) {
    const byKey = new Map();
    for (const node of Array.from(current.childNodes)) {
      if (keyOf(node)) byKey.set(keyOf(node), node);
      else node.remove();
    }
    let cursor = current.firstChild;
    for (const node of Array.from(fresh.children)) {
      let target = byKey.get(keyOf(node));
      byKey.delete(keyOf(node));
      if (target) {
        const before = target.previousSibling;
        const parent = target.parentNode;
        morph(target, node);
        // morph may have replaced the node; find what now stands in its place.
        target = before ? before.nextSibling : parent.firstChild;
      } else {
        target = document.importNode(node, true);
      }
      if (target !== cursor) current.insertBefore(target, cursor);
      else cursor = cursor.nextSibling;
    }
    for (const gone of byKey.values()) gone.remove();
  }

  let refreshing = null;

  // Fetch this page again and patch its live parts; resolves when done (or when it could not be done).
  function refreshLive() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      try {
        const response = await fetch(window.location.href, { headers: CSRF_HEADER, cache: "no-store", credentials: "same-origin" });
        if (response.redirected && new URL(response.url).pathname === "/signin") {
          window.location.reload();
          return;
        }
        if (!response.ok) return;
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        localizeTimes(page);
        for (const element of document.querySelectorAll("[data-live]")) {
          const fresh = page.querySelector(`[data-live="${element.getAttribute("data-live")}"]`);
          if (fresh) morph(element, fresh);
        }
        applyFills(document);
        document.dispatchEvent(new CustomEvent("styleq:refreshed"));
      } catch (error) {
        // The server restarted or the network dropped: the next round tries again.
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  function poll(milliseconds) {
    let timer = null;
    const schedule = () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        if (!document.hidden) await refreshLive();
        schedule();
      }, milliseconds);
    };
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshLive();
    });
    schedule();
  }

  let toastTimer = null;

  function toast(message, isError) {
    const element = document.getElementById("toast");
    if (!element) return;
    element.textContent = message;
    element.classList.toggle("error", Boolean(isError));
    element.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { element.hidden = true; }, 5000);
  }

  // Call the JSON API with the session cookie; the header proves the request comes from our own pages.
  async function api(url, options) {
    const response = await fetch(url, {
      credentials: "same-origin",
      ...options,
      headers: { Accept: "application/json", ...CSRF_HEADER, ...((options && options.headers) || {}) },
    });
    let body = null;
    try { body = await response.json(); } catch (error) { body = null; }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `the server answered ${response.status}`;
      const failure = new Error(message);
      failure.status = response.status;
      throw failure;
    }
    return body;
  }

  function formatNumber(value) {
    // Four significant digits, written as the server writes them (Python's "{:.4g}").
    if (value === null || value === undefined || !Number.isFinite(value)) return "—";
    const text = value.toPrecision(4);
    if (!text.includes("e")) return String(Number(text));
    const [mantissa, exponent] = text.split("e");
    const power = Number(exponent);
    return `${Number(mantissa)}e${power < 0 ? "-" : "+"}${String(Math.abs(power)).padStart(2, "0")}`;
  }

  function formatDuration(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) return "—";
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    const whole = Math.round(seconds);
    if (whole < 60) return `${whole} s`;
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
    return `${Math.floor(whole / 3600)} h ${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")} min`;
  }

  window.styleq = { api, refreshLive, toast, localizeTimes, formatNumber, formatDuration, CSRF_HEADER };

  localizeTimes(document);
  applyFills(document);
  const every = Number(document.body.getAttribute("data-poll"));
  if (every > 0) poll(every);
})();
