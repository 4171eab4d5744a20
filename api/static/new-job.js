// The new-job form: a content image and one style image or a blend of several with their shares (dropped
// or picked, previewed before upload), a preset and its common parameters within their valid ranges, and an
// optional webhook URL, sent to POST /v1/jobs; then on to the job's page.
(function () {
  "use strict";

  const { api } = window.styleq;
  const { presets, limits, fields: formFields } = JSON.parse(document.getElementById("form-data").textContent);
  const form = document.getElementById("new-job");
  // The parameters the form offers, each with its control (pages.py form_fields, from the parameters' specs).
  const fields = formFields.map((field) => field.name);
  const controls = Object.fromEntries(formFields.map((field) => [field.name, field.control]));
  const height = document.getElementById("height");
  const width = document.getElementById("width");
  const keepAspect = document.getElementById("keep-aspect");
  const errorBox = document.getElementById("form-error");
  const submitButton = document.getElementById("submit");
  const status = document.getElementById("submit-status");
  // Sent once per form: a double click, or a retry after a dropped answer, cannot make two jobs.
  const newKey = () => (crypto.randomUUID && crypto.randomUUID()) || `${Date.now()}-${Math.random()}`;
  let idempotencyKey = newKey();
  // A changed form is another request: the key its last try sent would be refused for it (422).
  const renewKey = () => { idempotencyKey = newKey(); };
  let contentAspect = null; // width / height of the chosen content image

  function megabytes(bytes) {
    return `${(bytes / 1048576).toFixed(1)} MB`;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  // --- the two images -----------------------------------------------------------------------------

  function choose(zone, file) {
    const input = zone.querySelector("input[type=file]");
    const preview = zone.querySelector("img.chosen");
    const name = zone.querySelector(".file-name");
    input.setCustomValidity("");
    if (!file) {
      zone.classList.remove("has-file");
      preview.hidden = true;
      name.textContent = "";
      return;
    }
    if (!file.type.startsWith("image/")) input.setCustomValidity(`${file.name} is not an image.`);
    else if (file.size > limits.max_upload_bytes) input.setCustomValidity(`${file.name} is ${megabytes(file.size)}, over the limit of ${megabytes(limits.max_upload_bytes)}.`);
    if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.alt = `Preview of the ${zone.getAttribute("data-dropzone")} image ${file.name}`;
    preview.hidden = false;
    preview.onload = () => {
      if (zone.getAttribute("data-dropzone") === "content") {
        contentAspect = preview.naturalWidth / preview.naturalHeight;
        followAspect();
      }
    };
    zone.classList.add("has-file");
    name.textContent = `${file.name} · ${megabytes(file.size)}`;
  }

  for (const zone of document.querySelectorAll("[data-dropzone]")) {
    const input = zone.querySelector("input[type=file]");
    input.addEventListener("change", () => choose(zone, input.files[0]));
    zone.addEventListener("dragenter", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
    zone.addEventListener("dragover", (event) => { event.preventDefault(); event.dataTransfer.dropEffect = "copy"; });
    zone.addEventListener("dragleave", (event) => { if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging"); });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      if (!event.dataTransfer.files.length) return;
      const files = new DataTransfer();
      files.items.add(event.dataTransfer.files[0]);
      input.files = files.files;
      choose(zone, input.files[0]);
      renewKey();
    });
  }

  // --- blending several styles ---------------------------------------------------------------------

  const slots = Array.from(document.querySelectorAll("[data-style-slot]"));
  const addStyle = document.getElementById("add-style");

  function shownSlots() {
    return slots.filter((slot) => !slot.hidden);
  }

  // Hidden slots are disabled, so the form's validation skips them; shares are asked for only in a blend.
  function showBlend() {
    const shown = shownSlots();
    for (const slot of slots) {
      const share = slot.querySelector("[data-blend-share]");
      share.hidden = slot.hidden || shown.length < 2;
      const file = slot.querySelector("input[type=file]");
      file.disabled = slot.hidden;
      file.required = !slot.hidden;
      share.querySelector("input").disabled = share.hidden;
    }
    addStyle.hidden = shown.length === slots.length;
  }

  addStyle.addEventListener("click", () => {
    const next = slots.find((slot) => slot.hidden);
    if (!next) return;
    next.hidden = false;
    showBlend();
    renewKey();
    next.querySelector("input[type=file]").focus();
  });

  for (const slot of slots) {
    const remove = slot.querySelector("[data-remove-style]");
    if (!remove) continue;
    remove.addEventListener("click", () => {
      const input = slot.querySelector("input[type=file]");
      input.value = "";
      choose(slot.querySelector("[data-dropzone]"), null);
      slot.hidden = true;
      showBlend();
      renewKey();
      addStyle.focus();
    });
  }
  showBlend();

  // --- parameters ---------------------------------------------------------------------------------

  function followAspect() {
    if (!keepAspect.checked || !contentAspect || !height.value) return;
    const [low, high] = limits.ranges.size;
    width.value = String(Math.min(high, Math.max(low, Math.round(Number(height.value) * contentAspect))));
    checkSize();
  }

  function checkSize() {
    const longSide = Math.max(Number(height.value), Number(width.value));
    width.setCustomValidity(longSide > limits.max_size
      ? `${height.value} × ${width.value} is ${longSide} pixels on its long side, over this service's limit of ${limits.max_size}.`
      : "");
  }

  function applyPreset(name) {
    const preset = presets[name];
    const size = Array.isArray(preset.size) ? preset.size : [preset.size, preset.size];
    height.value = size[0];
    width.value = size[1];
    for (const field of fields) {
      const element = document.getElementById(field);
      if (controls[field] === "checkbox") element.checked = Boolean(preset[field]);
      else element.value = Array.isArray(preset[field]) ? preset[field].join(", ") : preset[field];
    }
    const help = document.querySelector("[data-preset-help]");
    help.textContent = help.getAttribute(`data-${name}`) || "";
    followAspect();
    checkSize();
  }

  document.getElementById("preset").addEventListener("change", (event) => applyPreset(event.target.value));
  height.addEventListener("input", () => { followAspect(); checkSize(); });
  width.addEventListener("input", () => { keepAspect.checked = false; checkSize(); });
  keepAspect.addEventListener("change", followAspect);
  form.addEventListener("input", renewKey);
  form.addEventListener("change", renewKey);

  function params() {
    const values = { preset: document.getElementById("preset").value, size: [Number(height.value), Number(width.value)] };
    for (const field of fields) {
      const element = document.getElementById(field);
      const text = element.value.trim();
      if (controls[field] === "scales") {
        // "auto", or a list of fractions: the API checks that they rise to 1.
        values[field] = text === "auto" ? "auto" : text.split(",").map(Number);
      } else if (controls[field] === "names") {
        values[field] = text.split(",").map((name) => name.trim()).filter(Boolean);
      } else if (controls[field] === "checkbox") {
        values[field] = element.checked;
      } else {
        values[field] = controls[field] === "select" ? element.value : Number(element.value);
      }
    }
    return values;
  }

  // --- sending ------------------------------------------------------------------------------------

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError("");
    checkSize();
    if (!form.reportValidity()) return;
    const body = new FormData();
    body.append("content", document.getElementById("content-file").files[0]);
    // Every style as a repeated `style` field, in order; their shares only for a blend.
    const styles = shownSlots();
    for (const slot of styles) body.append("style", slot.querySelector("input[type=file]").files[0]);
    if (styles.length > 1) body.append("style_weights", styles.map((slot) => Number(slot.querySelector("[data-blend-share] input").value)).join(","));
    body.append("params", JSON.stringify(params()));
    const webhookUrl = document.getElementById("webhook_url").value.trim();
    if (webhookUrl) body.append("webhook_url", webhookUrl);
    submitButton.disabled = true;
    submitButton.insertAdjacentHTML("afterbegin", '<span class="spinner" aria-hidden="true"></span>');
    status.textContent = "Uploading the images…";
    try {
      const job = await api("/v1/jobs", { method: "POST", body, headers: { "Idempotency-Key": idempotencyKey } });
      status.textContent = "Queued. Opening the job…";
      window.location.assign(`/jobs/${job.id}`);
    } catch (error) {
      showError(`The job was not submitted: ${error.message}`);
      if (error.status) idempotencyKey = newKey(); // refused, so nothing was made: the next try is a new request
      status.textContent = "";
      submitButton.disabled = false;
      const spinner = submitButton.querySelector(".spinner");
      if (spinner) spinner.remove();
    }
  });
})();
