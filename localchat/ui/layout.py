"""The page's layout and wiring: which component sits where, and which handler each event calls.

Owns: the Blocks only; every handler lives with its concern (ui.chat, ui.model_panel,
ui.preferences, ui.conversations, ui.admin, ui.keys, ui.downloads). Invariant: elem_ids and
api_names are the page's public names (browser tests and gradio_client users rely on them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from localchat.types import DEVICES, DTYPES, QUANT_TYPES_4BIT, QUANTIZATIONS, SAMPLING_RANGES, SamplingParams
from localchat.ui.adapters import format_stop
from localchat.ui.conversations import IMPORT_FORM, export_links
from localchat.ui.markdown import latex_config

if TYPE_CHECKING:
    from localchat.ui.app import ChatUI

CSS = """
#lc-header { flex-wrap: nowrap; align-items: center; gap: 8px; }
#lc-header > * { flex-grow: 0; }
#lc-header > .lc-status { flex: 1 1 auto; min-width: 0; }
#lc-header button { height: auto; white-space: nowrap; }
.lc-status { font-size: 0.85em; opacity: 0.85; }
.lc-status p { margin: 0; }
#lc-input textarea { font-size: 16px; }  /* 16px stops iOS zooming into the field */
#lc-documents-row { gap: 8px; }
#lc-documents input { font-size: 16px; }
footer { display: none !important; }
#lc-conversations .wrap { flex-direction: column; gap: 2px; }
#lc-conversations label { width: 100%; box-sizing: border-box; border: 0; background: transparent; }
#lc-conversations label span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
/* the radios stay focusable (a keyboard picks a chat with Tab and Space) but out of sight */
#lc-conversations input[type=radio] { position: absolute; opacity: 0; width: 1px; height: 1px; margin: 0; }
#lc-conversations label.selected { background: var(--background-fill-secondary); color: var(--body-text-color);
  font-weight: 600; }
#lc-conversations label:hover { background: var(--background-fill-secondary); }
.lc-member { font-size: 0.9em; display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
.lc-member button, .lc-import { cursor: pointer; text-decoration: underline; background: none; border: 0;
  color: var(--link-text-color); padding: 0; font-size: 0.95em; }
.lc-import input { position: absolute; opacity: 0; width: 1px; height: 1px; }  /* reachable by Tab */
/* Keyboard users see where they are: one clear ring on every focused control (Gradio drops some). */
:is(button, a, input, textarea, select, [tabindex]):focus-visible { outline: 2px solid var(--color-accent) !important;
  outline-offset: 2px; }
textarea:focus-visible, input:not([type=checkbox], [type=radio]):focus-visible { outline-offset: -2px; }
#lc-conversations label:has(input:focus-visible), .lc-import:focus-within {
  outline: 2px solid var(--color-accent); outline-offset: -2px; }
/* A closed sidebar's controls leave the Tab order (they sit off screen); hidden after its slide-out. */
.sidebar:not(.open) > .sidebar-content { visibility: hidden; transition: visibility 0s linear 0.3s; }
@media (max-width: 640px) {  /* phones: bubbles use the width instead of leaving margins */
  #lc-header button { padding: 4px 8px; min-width: 0 !important; flex: 0 0 auto !important; width: auto !important; }
  #lc-header .lc-status { font-size: 0.75em; }
  #lc-chat .message-row.bubble { max-width: calc(100% - 12px); margin-left: 6px; margin-right: 6px; }
}
"""

THEME = gr.themes.Soft(  # system fonts only: no request to Google Fonts
    font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
).set(  # WCAG AA contrast (4.5:1 for text), measured by axe-core: Soft's indigo 500 and grey 400 fall short
    button_primary_background_fill="*primary_600",
    button_primary_background_fill_hover="*primary_700",
    button_primary_background_fill_hover_dark="*primary_700",
    button_secondary_background_fill_hover_dark="*primary_600",
    checkbox_label_background_fill_selected="*primary_600",
    block_label_text_color="*primary_700",
    block_title_text_color="*primary_700",
    body_text_color_subdued="*neutral_600",
    link_text_color_visited="*secondary_600",
    link_text_color_dark="*secondary_300",
    link_text_color_visited_dark="*secondary_300",
    link_text_color_active_dark="*secondary_300",
    link_text_color_hover_dark="*secondary_200",
)

_hidden: dict = {"api_visibility": "private"}


def build(ui: ChatUI) -> gr.Blocks:
    """The page: chats on the left, settings on the right, the chat in the middle; and its wiring."""
    presets = ui.service.presets
    default = ui.service.preset(ui.settings.preset) or (presets[0] if presets else None)
    params = default.sampling if default else SamplingParams()
    with gr.Blocks(title="localchat", fill_height=True, analytics_enabled=False) as demo:
        turns = gr.State([])
        current = gr.State(None)  # the open conversation's id; None: not saved yet (or incognito)
        with gr.Sidebar(label="Chats", open=False, width=280, elem_id="lc-chats") as chats_bar:
            new_chat_side = gr.Button("+ New chat", size="sm", elem_id="lc-new-side")
            search = gr.Textbox(
                label="Search chats", placeholder="Search chats", show_label=False, max_lines=1, elem_id="lc-search"
            )
            listing = gr.Radio([], label="Chats", show_label=False, container=False, elem_id="lc-conversations")
            incognito = gr.Checkbox(
                False,
                label="Incognito: new chats are not saved",
                elem_id="lc-incognito",
            )
            with gr.Accordion("This chat", open=False, elem_id="lc-this-chat"):
                title = gr.Textbox(label="Title", max_lines=1, elem_id="lc-title")
                with gr.Row():
                    rename = gr.Button("Rename", size="sm", elem_id="lc-rename")
                    delete = gr.Button("Delete", size="sm", variant="stop", elem_id="lc-delete")
            links = gr.Markdown(export_links(None), elem_id="lc-export")
            gr.HTML(IMPORT_FORM)
            notice = gr.Markdown("", elem_id="lc-privacy-notice")
            who = gr.HTML("", elem_id="lc-member")
        with gr.Sidebar(
            label="Settings", open=False, width=340, position="right", elem_id="lc-settings-panel"
        ) as sidebar:
            preset = gr.Dropdown(
                [p.name for p in presets],
                value=default.name if default else None,
                label="Preset",
                elem_id="lc-preset",
            )
            preset_note = gr.Markdown(f"*{default.description}*" if default else "")
            system = gr.Textbox(
                default.system_prompt if default else "",
                label="Instructions for the assistant (system prompt)",
                lines=3,
                info="{date}, {time} and {weekday} become today's date, the time and the day",
                elem_id="lc-system",
            )
            with gr.Accordion("Documents", open=False, visible=False, elem_id="lc-documents") as docs_box:
                docs_refresh = ui.documents.build()
                with gr.Accordion("Household libraries", open=False, visible=False, elem_id="lc-libraries") as libs:
                    libs_refresh = ui.library_admin.build()
            with gr.Accordion("Sampling", open=False, elem_id="lc-sampling"):
                sliders = _sampling_controls(params)
            with gr.Accordion("Model", open=False, elem_id="lc-model"):
                model_info = gr.Markdown(ui.service.status(), elem_id="lc-model-info")
                with gr.Column(visible=False) as loader:
                    picker = gr.Dropdown(
                        [],  # filled for admins when the page loads (models.on_load): paths stay off members' pages
                        value=None,
                        label="Model",
                        info="Pick one, or type a folder, a .gguf file, or a cached Hub id",
                        allow_custom_value=True,
                        elem_id="lc-model-picker",
                    )
                    quant = gr.Radio(list(QUANTIZATIONS), value=ui.settings.quantization, label="Quantization")
                    with gr.Group(visible=ui.settings.quantization == "4bit") as four_bit:
                        quant_type = gr.Radio(
                            list(QUANT_TYPES_4BIT), value=ui.settings.quant_type_4bit, label="4-bit type"
                        )
                        compute = gr.Dropdown(
                            list(DTYPES), value=ui.settings.compute_dtype, label="4-bit compute dtype"
                        )
                        double = gr.Checkbox(ui.settings.double_quant, label="Double quantization (a little smaller)")
                    device = gr.Radio(list(DEVICES), value=ui.settings.device, label="Device")
                    dtype = gr.Dropdown(list(DTYPES), value=ui.settings.dtype, label="Weights dtype")
                    context = gr.Number(
                        ui.settings.context_length or 0,
                        label="Context length cap (tokens; 0 = the model's own)",
                        precision=0,
                        minimum=0,
                    )
                    fit_button = gr.Button("Will it fit?", size="sm", elem_id="lc-fit-check")
                    fit_info = gr.Markdown("", elem_id="lc-fit")
                    with gr.Row():
                        load = gr.Button("Load model", variant="primary", elem_id="lc-load")
                        unload = gr.Button("Unload", elem_id="lc-unload")
                    load_result = gr.Markdown("", elem_id="lc-load-result")
                    picker_refresh = {
                        "fn": ui.models.picker,
                        "inputs": None,
                        "outputs": [picker],
                        "queue": False,
                        **_hidden,
                    }
                    downloads_refresh = ui.downloads.build(picker_refresh)
                    with gr.Accordion("This machine", open=False):
                        machine = gr.Markdown("", elem_id="lc-hardware")
            with gr.Accordion("API keys", open=False, visible=False, elem_id="lc-api-keys") as keys_box:
                keys_refresh = ui.keys.build()
            with gr.Accordion("Account", open=False, visible=False, elem_id="lc-account") as account_box:
                account_refresh = ui.account.build()
            if ui.service.preset_problems:
                gr.Markdown(
                    "**Some presets have problems:**\n"
                    + "\n".join(f"- {p.message}" for p in ui.service.preset_problems),
                    elem_id="lc-preset-problems",
                )
        with gr.Row(elem_id="lc-header"):
            status = gr.Markdown(ui.service.status_line(), elem_classes="lc-status", elem_id="lc-status")
            new_chat = gr.Button("New chat", size="sm", scale=0, min_width=80, elem_id="lc-new")
            household_btn = gr.Button(
                "Household", size="sm", scale=0, min_width=80, visible=False, elem_id="lc-household"
            )
            open_settings = gr.Button("Settings", size="sm", scale=0, min_width=80, elem_id="lc-settings")
        with gr.Column(visible=False, elem_id="lc-admin") as admin_view:
            admin_refresh = ui.admin.build()
        with gr.Column(scale=1, elem_id="lc-chat-view") as chat_view:
            chatbot = gr.Chatbot(
                [],
                label="localchat",
                show_label=False,
                editable="user",
                buttons=["copy"],
                scale=1,
                placeholder="**Ask anything.** Everything stays on this machine.",
                latex_delimiters=latex_config(),  # exactly the ones safe_markdown leaves to the renderer
                elem_id="lc-chat",
            )
            with gr.Row(elem_id="lc-documents-row"):  # which documents this chat answers from; above the box
                documents = gr.Dropdown(
                    # this member's libraries are added when the page loads (chat.documents_menu); an id is
                    # checked by the core, not by the dropdown (another member's id finds nothing)
                    [("No documents", "none"), ("All my documents", "all")],
                    value="none",
                    allow_custom_value=True,
                    label="Answer from documents",
                    show_label=False,
                    container=False,
                    scale=0,
                    min_width=220,
                    visible=ui.service.libraries is not None,
                    elem_id="lc-documents",
                )
            with gr.Row(equal_height=True):
                box = gr.Textbox(
                    label="Message",  # read out by screen readers; not shown
                    placeholder="Message localchat…",
                    show_label=False,
                    lines=1,
                    max_lines=8,
                    scale=8,
                    autofocus=True,
                    elem_id="lc-input",
                )
                send = gr.Button("Send", variant="primary", scale=1, min_width=70, elem_id="lc-send")
                stop = gr.Button("Stop", variant="stop", scale=1, min_width=70, visible=False, elem_id="lc-stop")
        timer = gr.Timer(1.5, active=ui.service.loading() is not None)
        wide = gr.Checkbox(False, visible=False)  # set by the browser: is the screen wide?
        # On a phone the chat list covers the chat: it closes once a chat is picked.
        close_if_narrow = {
            "fn": lambda is_wide: gr.skip() if is_wide else gr.Sidebar(open=False),
            "inputs": [wide],
            "outputs": [chats_bar],
            "js": "() => [window.innerWidth >= 900]",
            "queue": False,
            **_hidden,
        }

        reply_in = [turns, current, system, *sliders, documents]
        reply_out = [chatbot, turns, send, stop]
        add_in, add_out = [box, turns, current, incognito], [box, turns, chatbot, current, listing]
        # Send and Enter run the same two steps; only Send's are named for gradio_client users.
        go = {"fn": ui.chat.respond, "inputs": reply_in, "outputs": reply_out, "concurrency_limit": None}
        send.click(ui.chat.add_user, add_in, add_out, queue=False, api_name="add_user").then(**go, api_name="respond")
        box.submit(ui.chat.add_user, add_in, add_out, queue=False, **_hidden).then(**go, **_hidden)
        stop.click(ui.chat.stop, None, None, queue=False, api_name="stop")
        chatbot.retry(ui.chat.retry, [turns, current], [turns, chatbot], queue=False, **_hidden).then(**go, **_hidden)
        chatbot.undo(ui.chat.undo, [turns, current], [turns, chatbot, box], queue=False, **_hidden)
        chatbot.edit(ui.chat.edit, [turns, current], [turns, chatbot], queue=False, **_hidden).then(**go, **_hidden)
        fresh = [turns, chatbot, current, listing, title, links]
        # The Documents choice belongs to the chat: a new chat starts with none, an opened one shows its own.
        documents_menu = {"fn": ui.chat.documents_menu, "inputs": [current], "outputs": [documents], "queue": False}
        chatbot.clear(ui.chat.new_chat, None, fresh, queue=False, api_name="clear").then(**documents_menu, **_hidden)
        new_chat.click(ui.chat.new_chat, None, fresh, queue=False, **_hidden).then(**documents_menu, **_hidden)
        incognito.change(ui.chat.new_chat, None, fresh, queue=False, **_hidden).then(**documents_menu, **_hidden)
        new_chat_side.click(ui.chat.new_chat, None, fresh, queue=False, **_hidden).then(**close_if_narrow).then(
            **documents_menu, **_hidden
        )
        documents.input(ui.chat.choose_documents, [documents, current], None, queue=False, **_hidden)
        demo.load(**documents_menu, **_hidden)

        c = ui.conversations
        listing.input(
            c.open,
            [listing, current],
            [turns, chatbot, current, title, links],
            queue=False,
            api_name="open_conversation",
        ).then(**close_if_narrow).then(**documents_menu, **_hidden)
        search.change(c.search, [search, current], [listing], queue=False, **_hidden)
        rename.click(c.rename, [current, title, search], [listing], queue=False, api_name="rename_conversation")
        delete.click(
            c.delete,
            [current, search],
            [turns, chatbot, current, listing, title, links],
            queue=False,
            js="(id, q) => { if (!confirm('Delete this chat? This cannot be undone.')) throw 'kept'; return [id, q]; }",
            api_name="delete_conversation",
        )

        # The header button toggles the sidebar; its own arrow can open or close it too.
        sidebar_open = gr.State(False)
        sidebar.expand(lambda: True, None, [sidebar_open], queue=False, **_hidden)
        sidebar.collapse(lambda: False, None, [sidebar_open], queue=False, **_hidden)
        open_settings.click(
            lambda is_open: (gr.Sidebar(open=not is_open), not is_open),
            [sidebar_open],
            [sidebar, sidebar_open],
            queue=False,
            **_hidden,
        )
        admin_open = gr.State(False)
        household_btn.click(
            lambda is_open: (gr.Column(visible=not is_open), gr.Column(visible=is_open), not is_open),
            [admin_open],
            [admin_view, chat_view, admin_open],
            queue=False,
            **_hidden,
        ).then(**admin_refresh)
        quant.change(lambda q: gr.Group(visible=q == "4bit"), [quant], [four_bit], queue=False, **_hidden)
        keep = {"fn": ui.prefs.remember, "inputs": [preset, system, *sliders], "outputs": None, "queue": False}
        preset.input(ui.prefs.choose_preset, [preset], [system, preset_note, *sliders], queue=False, **_hidden).then(
            **keep, **_hidden
        )
        system.blur(**keep, **_hidden)
        for control in sliders:
            (control.release if isinstance(control, gr.Slider) else control.blur)(**keep, **_hidden)
        load.click(
            ui.models.load_model,
            [picker, quant, device, dtype, context, quant_type, compute, double],
            [load_result],
            concurrency_limit=None,
            api_name="load_model",
        ).then(ui.models.after_load, None, [picker, status], queue=False, **_hidden)
        fit_in = [picker, device, context]
        fit_button.click(ui.models.fit_estimate, fit_in, [fit_info], queue=False, **_hidden)
        picker.input(ui.models.fit_estimate, fit_in, [fit_info], queue=False, **_hidden)
        unload.click(ui.models.unload_model, None, [load_result], queue=False, **_hidden).then(
            ui.models.status, None, [status, model_info, timer], queue=False, **_hidden
        )
        timer.tick(ui.models.status, None, [status, model_info, timer], queue=False, **_hidden)
        demo.load(ui.models.status, None, [status, model_info, timer], queue=False, **_hidden)
        demo.load(ui.models.on_load, None, [picker, machine], queue=False, **_hidden)
        demo.load(**keys_refresh)
        demo.load(**account_refresh)
        demo.load(**downloads_refresh)
        demo.load(ui.documents.visibility, None, [docs_box, libs], queue=False, **_hidden).then(**docs_refresh).then(
            **libs_refresh
        )
        # The chat list opens by itself on a wide screen; on a phone it would cover the chat.
        demo.load(
            lambda is_wide: gr.Sidebar(open=True) if is_wide else gr.skip(),  # it starts closed
            [wide],
            [chats_bar],
            js="() => [window.innerWidth >= 900]",
            queue=False,
            **_hidden,
        )
        demo.load(
            ui.prefs.on_load,
            None,
            [listing, preset, preset_note, system, *sliders, who, notice, loader, household_btn, keys_box, account_box],
            queue=False,
            **_hidden,
        )
    return demo


def _sampling_controls(p: SamplingParams) -> list[gr.components.Component]:
    def slider(name: str, label: str, info: str | None = None) -> gr.Slider:
        low, high, step = SAMPLING_RANGES[name]
        return gr.Slider(low, high, getattr(p, name), step=step, label=label, info=info)

    return [
        slider("temperature", "Temperature", "0 = always the most likely word; higher = more varied"),
        slider("top_p", "Top-p"),
        slider("top_k", "Top-k", "0 = off"),
        slider("min_p", "Min-p"),
        slider("repetition_penalty", "Repetition penalty"),
        slider("max_new_tokens", "Max new tokens", "the longest reply, in tokens (about ¾ of a word each)"),
        gr.Number(-1 if p.seed is None else p.seed, label="Seed", info="-1 = random", precision=0),
        gr.Textbox(format_stop(p.stop), label="Stop strings", info="one per line; \\n for a line break", lines=2),
    ]
