"""The app's CSS (gradio 6 takes it at launch: lab.ui.launch_kwargs). Phone width is 640 px and below."""

CSS = """
.lab-progress { position: relative; height: 1.6rem; border-radius: 6px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary); overflow: hidden; }
.lab-progress-fill { position: absolute; inset: 0 auto 0 0; background: var(--color-accent); opacity: .35;
  transition: width .4s; }
.lab-progress span { position: relative; padding-left: .6rem; line-height: 1.6rem; font-size: .9rem;
  white-space: nowrap; }
.lab-response { border-left: 3px solid var(--color-accent); padding-left: .6rem; margin-bottom: .8rem; }
.lab-made { font-size: .85rem; opacity: .8; }
/* a tab with no job shows no empty bar, Stop button or log */
.lab-job:has(.lab-progress[data-state="none"]) { display: none !important; }
/* a dropdown's chosen text is never hidden under its arrow */
.lab-wide-dropdown input { text-overflow: ellipsis; }
.lab-empty { opacity: .75; font-style: italic; }

/* result tables: words never break inside, a wide table scrolls in its own box */
.lab-table { overflow-x: auto; max-width: 100%; }
.lab-table table { border-collapse: collapse; font-size: .9rem; width: 100%; }
.lab-table th, .lab-table td { border: 1px solid var(--border-color-primary); padding: .3rem .5rem;
  text-align: left; vertical-align: top; }
.lab-table th { word-break: normal; overflow-wrap: normal; hyphens: none; min-width: 4.5em;
  background: var(--block-background-fill); }
.lab-table td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }

/* the side-by-side grid: one column per model, equal widths; stacked at phone width */
.lab-grid-item { margin: 0 0 1.2rem; }
.lab-grid-item.lab-picked > .lab-grid-prompt { border-left: 4px solid var(--color-accent); padding-left: .5rem; }
.lab-grid-prompt { margin: 0 0 .4rem; }
.lab-grid { display: grid; grid-auto-flow: column; grid-auto-columns: minmax(0, 1fr); gap: .6rem; }
.lab-cell { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: .5rem; min-width: 0;
  display: flex; flex-direction: column; gap: .3rem; }
.lab-cell-text { white-space: pre-wrap; overflow-wrap: anywhere; word-break: normal; max-height: 22rem;
  overflow-y: auto; font-size: .92rem; flex: 1; }
.lab-cell-meta, .lab-cell-verdict { font-size: .8rem; opacity: .85; }
.lab-cut { color: var(--color-red-600, #c0392b); font-weight: 600; }
.lab-v-win { color: var(--color-green-600, #16a34a); font-weight: 600; }
.lab-v-loss { color: var(--color-red-600, #c0392b); font-weight: 600; }
.lab-v-tie, .lab-v-none, .lab-ref { opacity: .8; }
.lab-flag { font-size: .85rem; color: var(--color-red-600, #c0392b); }

/* the Share tab's card previews: a box of their own, not a page of 12,000 px */
.lab-card { max-height: 28rem; overflow: auto; border: 1px solid var(--border-color-primary); border-radius: 6px;
  padding: .5rem .8rem; }

@media (max-width: 640px) {
  .gradio-container { padding: 4px !important; }
  .lab-grid { grid-auto-flow: row; grid-auto-columns: auto; grid-template-columns: minmax(0, 1fr); }
  .lab-wide-on-phone { min-width: 100% !important; }
  .lab-table { max-width: calc(100vw - 24px); }  /* a 15-column table scrolls in its box, not the page */
}
"""

# Gradio scopes CSS= under .gradio-container .contain; the page's own side padding (32 px on .main, a parent of
# .contain) needs a plain <style> in the page head.
HEAD = """<style>
@media (max-width: 640px) { .gradio-container .main { padding-left: 6px !important; padding-right: 6px !important; } }
</style>"""
