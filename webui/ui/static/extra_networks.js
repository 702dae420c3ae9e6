// Extra Networks cards (webui/ui/extra_networks.py): a click on a card toggles its text in the tab's prompt, as
// A1111's extraNetworksCardOnClick does, or selects its checkpoint. One listener on the document, so cards that
// Gradio re-renders (search, refresh) need nothing of their own. Names are only ever used as text, never as HTML.
(() => {
    if (window.studioExtraNetworks) return;
    window.studioExtraNetworks = true;

    const SEPARATOR = " ";  // A1111's extra_networks_add_text_separator
    const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

    function setValue(textarea, value) {
        textarea.value = value;
        textarea.dispatchEvent(new Event("input", { bubbles: true }));  // Gradio reads the value on input
    }

    // The prompt without the card's text, or null when the text is not there (A1111 removes on a second click).
    function without(prompt, kind, text, name) {
        let pattern;
        if (kind === "lora") {
            // <lora:NAME:any weight...>, whatever weight the user has typed since (A1111 matches by name)
            pattern = new RegExp(`(?:${SEPARATOR})?<(?:lora|lyco):${escapeRegExp(name)}(?::[^>]*)?>`, "g");
        } else {
            pattern = new RegExp(`(?:${SEPARATOR})?(?<![\\w-])${escapeRegExp(text)}(?![\\w-])`, "g");
        }
        const next = prompt.replace(pattern, "");
        return next === prompt ? null : next.replace(/^\s+/, "");
    }

    function toggle(textarea, kind, text, name) {
        const removed = without(textarea.value, kind, text, name);
        if (removed !== null) {
            setValue(textarea, removed);
        } else {
            const current = textarea.value.replace(/\s+$/, "");
            setValue(textarea, current ? current + SEPARATOR + text : text);
        }
    }

    function activate(card) {
        const tab = card.dataset.tab;
        const kind = card.dataset.kind;
        if (kind === "checkpoints") {
            const box = document.querySelector(`#${tab}_extra_networks_checkpoint textarea, #${tab}_extra_networks_checkpoint input`);
            if (box) setValue(box, card.dataset.insert);
            return;
        }
        const prompt = document.querySelector(`#${tab}_prompt textarea`);
        if (prompt) toggle(prompt, kind, card.dataset.insert, card.dataset.name);
    }

    document.addEventListener("click", (event) => {
        if (event.target.closest(".studio-en-details")) return;  // reading the details is not a click on the card
        const card = event.target.closest(".studio-en-card");
        if (card) activate(card);
    });
    document.addEventListener("keydown", (event) => {
        const card = event.target.closest?.(".studio-en-card");
        if (card && (event.key === "Enter" || event.key === " ") && !event.target.closest(".studio-en-details")) {
            event.preventDefault();
            activate(card);
        }
    });
})();
