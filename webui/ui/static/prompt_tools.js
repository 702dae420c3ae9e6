// Prompt-box keyboard tools and img2img paste/drop, run once when the page loads (webui/ui/prompt_tools.py).
// Listeners sit on the document (capture phase), so they work for widgets Gradio mounts or re-mounts later and run
// before Gradio's own handlers. Every change to a textbox is followed by an "input" event so Gradio sees the value.
(() => {
    if (window.studioPromptTools) return;  // the page script runs once per page, but be safe on re-runs
    window.studioPromptTools = true;

    const TABS = ["txt2img", "img2img"];
    const PROMPTS = TABS.flatMap((t) => [`#${t}_prompt textarea`, `#${t}_negative_prompt textarea`]).join(", ");
    const WEIGHT_STEP = 0.1;        // A1111's keyedit_precision_attention
    const EXTRA_STEP = 0.05;        // A1111's keyedit_precision_extra (<lora:name:0.8>)
    const DELIMITERS = ".,\\/!?%^*;:{}=`~() \r\n\t";  // A1111's keyedit_delimiters plus whitespace
    const LIST_TTL_MS = 30000;

    const style = document.createElement("style");
    style.textContent = `
        .studio-token-counter { text-align: right; margin: -14px 4px -10px 0 !important; padding: 0 !important; min-height: 0 !important; }
        .studio-token-count { font-size: 0.8em; opacity: 0.75; font-variant-numeric: tabular-nums; }
        .studio-autocomplete { position: fixed; z-index: 1000; max-height: 240px; overflow-y: auto; min-width: 200px;
            background: var(--background-fill-primary, #fff); color: var(--body-text-color, #111);
            border: 1px solid var(--border-color-primary, #ccc); border-radius: 6px;
            box-shadow: 0 4px 12px rgba(0, 0, 0, 0.15); font-size: 0.9em; }
        .studio-autocomplete-item { padding: 4px 10px; cursor: pointer; white-space: nowrap; }
        .studio-autocomplete-item small { opacity: 0.6; margin-left: 8px; }
        .studio-autocomplete-item[aria-selected="true"] { background: var(--color-accent-soft, #dbeafe); }`;
    document.head.appendChild(style);

    const TITLES = {
        style_apply: "Apply the selected styles to the prompts (and clear the selection)",
        styles_refresh: "Read styles.csv again",
    };
    for (const tab of TABS) {
        for (const [id, title] of Object.entries(TITLES)) document.getElementById(`${tab}_${id}`)?.setAttribute("title", title);
    }

    const isPrompt = (el) => el instanceof HTMLTextAreaElement && el.matches(PROMPTS);
    const tabOf = (el) => TABS.find((t) => el.closest(`#${t}_prompt, #${t}_negative_prompt`));

    function setText(textarea, text, start, end) {
        textarea.value = text;
        textarea.setSelectionRange(start, end);
        textarea.dispatchEvent(new Event("input", { bubbles: true }));  // Gradio reads the value on input
    }

    // --- Ctrl+Up / Ctrl+Down: the weight of the selection, or of the word or (...)/<...> block at the caret -----
    function selectBlock(text, caret, open, close) {
        // The innermost open...close pair around the caret; the selection is its text up to the last colon.
        const before = text.slice(0, caret);
        let start = before.lastIndexOf(open);
        let closeBefore = before.lastIndexOf(close);
        while (start !== -1 && closeBefore > start) {
            start = before.lastIndexOf(open, start - 1);
            closeBefore = before.lastIndexOf(close, closeBefore - 1);
        }
        if (start === -1) return null;
        const after = text.slice(caret);
        let end = after.indexOf(close);
        let openAfter = after.indexOf(open);
        while (end !== -1 && openAfter !== -1 && openAfter < end) {
            end = after.indexOf(close, end + 1);
            openAfter = after.indexOf(open, openAfter + 1);
        }
        if (end === -1) return null;
        const inner = text.slice(start + 1, caret + end);
        const colon = inner.lastIndexOf(":");
        if (colon === -1) return null;
        return [start + 1, start + 1 + colon];
    }

    function selectWord(text, caret) {
        let start = caret;
        let end = caret;
        while (start > 0 && !DELIMITERS.includes(text[start - 1])) start--;
        while (end < text.length && !DELIMITERS.includes(text[end])) end++;
        return [start, end];
    }

    function formatWeight(weight) {
        const rounded = parseFloat(weight.toPrecision(12));
        return Number.isInteger(rounded) ? rounded.toFixed(1) : String(rounded);
    }

    function editWeight(textarea, up) {
        let text = textarea.value;
        let [start, end] = [textarea.selectionStart, textarea.selectionEnd];
        if (start === end) {
            [start, end] = selectBlock(text, start, "<", ">") || selectBlock(text, start, "(", ")")
                || selectWord(text, start);
        }
        let close = ")";
        let step = WEIGHT_STEP;
        if (start > 0 && text[start - 1] === "<") {
            close = ">";
            step = EXTRA_STEP;
        } else if (start === 0 || text[start - 1] !== "(" || text[end] !== ":") {
            while (end > start && text[end - 1] === " ") end--;  // never weight trailing spaces
            if (start === end) return;
            text = `${text.slice(0, start)}(${text.slice(start, end)}:1.0)${text.slice(end)}`;
            start += 1;
            end += 1;
        }
        // text[end] is the ':' before the weight; the weight runs to the closing bracket.
        const closeAt = text.indexOf(close, end + 1);
        if (text[end] !== ":" || closeAt === -1) return;
        const current = parseFloat(text.slice(end + 1, closeAt));
        if (Number.isNaN(current)) return;
        const weight = parseFloat((current + (up ? step : -step)).toPrecision(12));
        if (close === ")" && weight === 1) {  // back to plain text at 1.0
            text = text.slice(0, start - 1) + text.slice(start, end) + text.slice(closeAt + 1);
            setText(textarea, text, start - 1, end - 1);
        } else {
            text = text.slice(0, end + 1) + formatWeight(weight) + text.slice(closeAt);
            setText(textarea, text, start, end);
        }
    }

    // --- autocompletion of LoRA names after "<lora:" and of embedding names as words --------------------------
    const lists = { loras: [], embeddings: [], fetched: 0, pending: null };

    async function fetchJson(url) {
        const response = await fetch(url, { credentials: "same-origin" });
        if (!response.ok) throw new Error(`${url}: ${response.status}`);
        return response.json();
    }

    function refreshLists() {
        if (window.studioPageConfig?.apiLists === false) return null;  // behind --api-auth: no completion lists
        if (lists.pending || Date.now() - lists.fetched < LIST_TTL_MS) return lists.pending;
        lists.pending = Promise.all([
            fetchJson("/sdapi/v1/loras").then((items) => items.map((l) => l.name)).catch(() => lists.loras),
            fetchJson("/sdapi/v1/embeddings")
                .then((e) => Object.keys({ ...(e.loaded || {}), ...(e.skipped || {}) })).catch(() => lists.embeddings),
        ]).then(([loras, embeddings]) => {
            Object.assign(lists, { loras, embeddings, fetched: Date.now(), pending: null });
        });
        return lists.pending;
    }

    const popup = { el: null, textarea: null, items: [], index: 0, from: 0, kind: "" };

    function closePopup() {
        popup.el?.remove();
        Object.assign(popup, { el: null, textarea: null, items: [], index: 0 });
    }

    function candidates(textarea) {
        const before = textarea.value.slice(0, textarea.selectionStart);
        const lora = before.match(/<lora:([^:<>]*)$/i);
        if (lora) {
            const typed = lora[1].toLowerCase();
            const found = lists.loras.filter((n) => n.toLowerCase().includes(typed));
            found.sort((a, b) => a.toLowerCase().startsWith(typed) ? -1 : b.toLowerCase().startsWith(typed) ? 1 : 0);
            return { kind: "lora", from: before.length - lora[0].length, items: found };
        }
        const word = before.match(/(?:^|[\s,(\[])([\w.-]{2,})$/);
        if (word) {
            const typed = word[1].toLowerCase();
            const found = lists.embeddings.filter((n) => n.toLowerCase().startsWith(typed) && n.toLowerCase() !== typed);
            return { kind: "embedding", from: before.length - word[1].length, items: found };
        }
        return { kind: "", from: 0, items: [] };
    }

    function renderPopup() {
        popup.el.replaceChildren(...popup.items.map((name, i) => {
            const item = document.createElement("div");
            item.className = "studio-autocomplete-item";
            item.setAttribute("role", "option");
            item.setAttribute("aria-selected", String(i === popup.index));
            item.textContent = name;
            const hint = document.createElement("small");
            hint.textContent = popup.kind === "lora" ? "LoRA" : "embedding";
            item.appendChild(hint);
            item.addEventListener("mousedown", (event) => {  // mousedown: before the textarea loses focus
                event.preventDefault();
                popup.index = i;
                accept();
            });
            return item;
        }));
        popup.el.children[popup.index]?.scrollIntoView({ block: "nearest" });
    }

    function showPopup(textarea) {
        const found = candidates(textarea);
        if (!found.items.length) return closePopup();
        if (!popup.el) {
            popup.el = document.createElement("div");
            popup.el.className = "studio-autocomplete";
            popup.el.id = "studio_autocomplete";
            popup.el.setAttribute("role", "listbox");
            document.body.appendChild(popup.el);
        }
        Object.assign(popup, { textarea, items: found.items.slice(0, 50), index: 0, from: found.from,
                               kind: found.kind });
        const box = textarea.getBoundingClientRect();
        popup.el.style.left = `${box.left}px`;
        popup.el.style.top = `${box.bottom + 2}px`;
        renderPopup();
    }

    function accept() {
        const { textarea, items, index, from, kind } = popup;
        const name = items[index];
        closePopup();
        if (!textarea || name === undefined) return;
        const text = textarea.value;
        const caret = textarea.selectionStart;
        let rest = text.slice(caret);
        let insert = name;
        if (kind === "lora") {
            rest = rest.replace(/^[^:<>\s,]*(:[^<>]*)?>?/, "");  // what was typed of an old name, weight, ">"
            insert = `<lora:${name}:1>`;
        }
        const head = text.slice(0, from) + insert;
        setText(textarea, head + rest, head.length, head.length);
    }

    document.addEventListener("input", (event) => {
        const target = event.composedPath()[0];
        if (!isPrompt(target) || !event.isTrusted) return;  // our own input events (after an edit) do not reopen it
        const pending = refreshLists();
        if (pending) pending.then(() => document.activeElement === target && showPopup(target));
        showPopup(target);
    }, true);

    document.addEventListener("focusout", (event) => {
        if (event.composedPath()[0] === popup.textarea) closePopup();
    }, true);

    document.addEventListener("focusin", (event) => {
        if (isPrompt(event.composedPath()[0])) refreshLists();
    }, true);

    document.addEventListener("keydown", (event) => {
        const target = event.composedPath()[0];
        if (!isPrompt(target)) return;
        const ctrl = event.ctrlKey || event.metaKey;
        if (popup.el && popup.textarea === target) {
            const moves = { ArrowDown: 1, ArrowUp: -1 };
            if (event.key in moves && !ctrl) {
                event.preventDefault();
                popup.index = (popup.index + moves[event.key] + popup.items.length) % popup.items.length;
                renderPopup();
                return;
            }
            if ((event.key === "Tab" || event.key === "Enter") && !ctrl && !event.altKey && !event.shiftKey) {
                event.preventDefault();
                event.stopPropagation();
                accept();
                return;
            }
            if (event.key === "Escape") {
                event.preventDefault();
                closePopup();
                return;
            }
        }
        if (event.key === "Enter" && (ctrl || event.altKey)) {  // Ctrl/Cmd/Alt+Enter: Generate, no newline
            event.preventDefault();
            event.stopPropagation();
            closePopup();
            document.getElementById(`${tabOf(target)}_generate`)?.click();
            return;
        }
        if (ctrl && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
            event.preventDefault();
            closePopup();
            editWeight(target, event.key === "ArrowUp");
        }
    }, true);

    // --- img2img: Ctrl+V of an image, or a dropped gallery image (its URL), lands in the image input ------------
    const IMAGE_BOX = "#img2img_image";

    function visible(el) {
        return !!el && el.offsetParent !== null;
    }

    async function putImage(file) {
        const box = document.querySelector(IMAGE_BOX);
        if (!visible(box)) return false;
        let input = box.querySelector("input[type=file]");
        if (!input) {  // an image is shown: clear it first, then the upload input comes back
            box.querySelector("button[aria-label='Clear'], button[title='Clear']")?.click();
            for (let i = 0; i < 20 && !input; i++) {
                await new Promise((resolve) => setTimeout(resolve, 50));
                input = box.querySelector("input[type=file]");
            }
        }
        if (!input) return false;
        const transfer = new DataTransfer();
        transfer.items.add(file);
        input.files = transfer.files;
        input.dispatchEvent(new Event("change", { bubbles: true }));
        return true;
    }

    document.addEventListener("paste", (event) => {
        const box = document.querySelector(IMAGE_BOX);
        if (!visible(box)) return;  // the img2img tab (img2img mode) is not showing
        const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
        if (!file) return;
        const target = event.composedPath()[0];
        const focused = box.contains(target);
        const empty = !!box.querySelector("input[type=file]");
        const typing = target instanceof HTMLTextAreaElement || target instanceof HTMLInputElement;
        if (!focused && (!empty || typing)) return;  // a paste into a prompt box, or over an image already there
        event.preventDefault();
        putImage(file);
    }, true);

    document.addEventListener("drop", async (event) => {
        const box = document.querySelector(IMAGE_BOX);
        if (!box || !box.contains(event.composedPath()[0])) return;
        if ([...(event.dataTransfer?.files || [])].length) return;  // real files: Gradio's own drop handles them
        const url = (event.dataTransfer?.getData("text/uri-list") || "").split("\n")[0].trim();
        if (!url) return;
        let parsed;
        try {
            parsed = new URL(url, location.href);
        } catch {
            return;
        }
        if (parsed.origin !== location.origin) return;  // only this server's images (another tab's gallery)
        event.preventDefault();
        event.stopPropagation();
        const response = await fetch(parsed, { credentials: "same-origin" });
        if (!response.ok) return;
        const blob = await response.blob();
        if (!blob.type.startsWith("image/")) return;
        const name = decodeURIComponent(parsed.pathname.split("/").pop() || "image.png");
        putImage(new File([blob], name, { type: blob.type }));
    }, true);
})();
