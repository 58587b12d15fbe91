"""The lab's Gradio UI, one module per screen area; the engine is the `optim` package (nothing here measures).

    context      the server's state (limits, capabilities, presets, baselines, running comparisons), made at launch
    fields       control values <-> settings (no Gradio)
    text         what the page says: summaries, headline, tables (no Gradio)
    controls     the settings column: a control per config field, grouped by technique
    sharing      presets: shipped, uploaded, downloaded, shared as links, kept in the browser
    run_panel    Run and Cancel: one comparison at a time, progress, errors as messages
    results      the results column: headline, images, metrics, charts, details, history
    api          the public `compare` endpoint
    zerogpu      comparisons inside `@spaces.GPU` on a ZeroGPU Space
    layout       places the areas on the page
    server       `main()`: builds and serves it (app.py calls it)
"""
