"""One run: build (config -> data, model, module, trainer), the LightningModule, the run folder, the runner."""
