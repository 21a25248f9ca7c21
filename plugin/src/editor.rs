//! The egui editor: prompt, Generate and Stop, the parameters, the model (a folder, or
//! *Get model...* from the hub) and execution provider, a status line, and a live view of
//! the codebook pattern.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use egui::{Color32, Rect, Sense, Stroke, Vec2};
use musicgen_engine::{Bundle, Conditioning, Coord, ExecutionProvider, Readiness};
use musicgen_import::Precision;
use musicgen_import::hub::{HubOptions, LICENCE, OFFICIAL};
use nice_plug::context::gui::{GuiContext, ParamSetter};
use nice_plug::editor::ResizeHint;
use nice_plug::editor::dpi::LogicalSize;
use nice_plug::prelude::{FloatParam, Param};
use nice_plug_egui::widgets::ParamSlider;
use nice_plug_egui::{EguiEditor, EguiNiceSettings, Frame, NiceEguiApp, create_egui_editor};
use parking_lot::Mutex;

use crate::controller::{Controller, Request, Snapshot, default_model_dir, resources_dir};
use crate::downloads::{ModelDownload, Phase, bundle_dir};
use crate::params::{EDITOR_MIN_SIZE, MusicGenParams};
use crate::slots::{PromptBank, SLOT_COUNT, note_name};

/// Frames the pattern view shows: 3 s at 50 Hz.
const VIEW_FRAMES: usize = 150;

pub struct EditorApp {
    params: Arc<MusicGenParams>,
    requests: Sender<Request>,
    snapshot: Arc<Mutex<Snapshot>>,
    gui: Option<GuiContext>,
    /// The prompt being edited.
    prompt: String,
    /// The persisted prompt as last seen, to notice one a loaded state brings.
    stored_prompt: String,
    model_dir: String,
    /// The chosen model as its manifest names it (its family), or why it cannot be used;
    /// checked when it is chosen.
    model_check: Result<ChosenModel, String>,
    /// The folder dialog's answer, while one is open.
    browsing: Option<Receiver<Browsed>>,
    /// The *Get model...* list: open or not, the checkpoint chosen in it, the precision,
    /// and the download under way.
    get_model: GetModel,
    /// A bank file dialog's answer, while one is open, and what the file is for.
    bank_dialog: Option<(BankAction, Receiver<Browsed>)>,
    /// What the last bank load or save said.
    bank_message: Option<(String, bool)>,
    /// The output's peak as the audio thread leaves it, and the meter's falling level.
    output_peak: Arc<AtomicU32>,
    meter_db: f32,
    view: Snapshot,
}

pub fn create(params: Arc<MusicGenParams>, controller: &Controller) -> Option<EguiEditor<EditorApp>> {
    let prompt = params.prompt.read().clone();
    let model_dir = params.model_dir.read().clone();
    let app = EditorApp {
        params,
        requests: controller.sender(),
        snapshot: controller.snapshot(),
        gui: None,
        stored_prompt: prompt.clone(),
        prompt,
        model_check: describe_model(&model_dir),
        model_dir,
        browsing: None,
        get_model: GetModel::default(),
        bank_dialog: None,
        bank_message: None,
        output_peak: controller.output_peak(),
        meter_db: SILENCE_DB,
        view: Snapshot::default(),
    };
    create_egui_editor(
        Arc::clone(&app.params.editor_state),
        Default::default(),
        EguiNiceSettings {
            title: "MusicGen Live".into(),
            resize_hint: ResizeHint::RESIZABLE
                .with_min_logical_size(LogicalSize::new(EDITOR_MIN_SIZE.0, EDITOR_MIN_SIZE.1)),
            ..Default::default()
        },
        app,
    )
}

impl NiceEguiApp for EditorApp {
    fn build(
        &mut self,
        _egui_ctx: egui::Context,
        gui: GuiContext,
        frame: &mut Frame,
    ) -> Result<(), nice_plug_egui::baseview::HandlerError> {
        self.gui = Some(gui);
        // The window opens at the size the editor was created with; the project's may
        // have come with a state loaded since.
        if let Some((width, height)) = self.params.saved_editor_size() {
            let size = nice_plug_egui::baseview::dpi::LogicalSize::new(f64::from(width), f64::from(height));
            if let Err(error) = frame.baseview_window().resize(size) {
                tracing::warn!("the editor could not take its saved size {width}x{height}: {error}");
            }
        }
        Ok(())
    }

    /// Keeps the size the performer gives the window, for the project; sizes before the
    /// window is built are the default it opens at, not a choice.
    fn resized(&mut self, new_size: nice_plug_egui::baseview::WindowSize) {
        if self.gui.is_some() {
            let size = new_size.logical;
            *self.params.editor_size.write() = Some((size.width as f32, size.height as f32));
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut Frame) {
        self.view = self.snapshot.lock().clone();
        // A state the host loaded may bring another prompt: show it.
        let stored = self.params.prompt.read().clone();
        if stored != self.stored_prompt {
            self.prompt = stored.clone();
            self.stored_prompt = stored;
        }
        ui.ctx().request_repaint_after(REPAINT_EVERY);
        self.shortcuts(ui);
        // A window made smaller than the editor scrolls rather than cutting it off.
        egui::ScrollArea::both().auto_shrink(false).show(ui, |ui| {
            ui.heading("MusicGen Live");
            self.meters(ui);
            self.slots(ui);
            // The controls that apply to the chosen model: a melody model follows a
            // melody and cannot morph.
            if self.chosen_melody_model() {
                self.melody(ui);
            } else {
                self.morph(ui);
            }
            ui.label("Prompt (of the playing slot)");
            ui.add(
                egui::TextEdit::multiline(&mut self.prompt)
                    .desired_rows(2)
                    .desired_width(f32::INFINITY),
            );
            ui.horizontal(|ui| {
                if ui.button("Generate").on_hover_text("Enter").clicked() {
                    self.generate();
                }
                if ui.button("Stop").on_hover_text("Esc").clicked() {
                    let _ = self.requests.send(Request::Stop);
                }
                if ui
                    .button("Continue from sidechain")
                    .on_hover_text("The music carries on from the last Kept context seconds of the sidechain input")
                    .clicked()
                {
                    let _ = self.requests.send(Request::ContinueFromSidechain);
                }
            });
            ui.separator();
            self.parameters(ui);
            ui.separator();
            self.model(ui);
            ui.separator();
            self.status(ui);
            self.pattern_view(ui);
        });
    }
}

/// "ready in N s" while a slow stream fills the buffer it needs, otherwise the margin on
/// real time.
fn readiness_text(readiness: Option<Readiness>) -> String {
    match readiness {
        None | Some(Readiness::Waiting { ready_in_seconds: None }) => "measuring speed".to_owned(),
        Some(Readiness::Waiting {
            ready_in_seconds: Some(seconds),
        }) => format!("slower than real time: ready in {:.0} s", seconds.ceil()),
        Some(Readiness::Ready { delivery_factor }) if delivery_factor > 0.0 => {
            format!("real-time x{delivery_factor:.2}")
        }
        Some(Readiness::Ready { .. }) => "real-time: measuring".to_owned(),
    }
}

impl EditorApp {
    /// Stores the prompt box in the playing slot and as the prompt, and asks for it.
    fn generate(&mut self) {
        let active = self.params.active_slot.load(Ordering::Relaxed) as usize;
        if let Some(slot) = self.params.bank.write().slots.get_mut(active) {
            slot.prompt = self.prompt.clone();
        }
        *self.params.prompt.write() = self.prompt.clone();
        self.stored_prompt = self.prompt.clone();
        let _ = self.requests.send(Request::Generate);
    }

    /// Keys for the stage, while no text field has the keyboard: Enter generates, Esc
    /// stops, 1 to 8 choose a slot, N the next one.
    fn shortcuts(&mut self, ui: &egui::Ui) {
        if ui.ctx().egui_wants_keyboard_input() {
            return;
        }
        let (generate, stop, next, slot) = ui.input(|input| {
            let slot = SLOT_KEYS.iter().position(|key| input.key_pressed(*key));
            (
                input.key_pressed(egui::Key::Enter),
                input.key_pressed(egui::Key::Escape),
                input.key_pressed(egui::Key::N),
                slot,
            )
        });
        if generate {
            self.generate();
        }
        if stop {
            let _ = self.requests.send(Request::Stop);
        }
        if next {
            let _ = self.requests.send(Request::NextSlot);
        }
        if let Some(slot) = slot {
            let _ = self.requests.send(Request::ChooseSlot(slot));
        }
    }

    /// What a performer glances at: the state, how far generation is ahead of playback
    /// and its margin on real time, the output level and the underruns.
    fn meters(&mut self, ui: &mut egui::Ui) {
        let peak = f32::from_bits(self.output_peak.swap(0, Ordering::Relaxed));
        let peak_db = 20.0 * peak.max(1e-6).log10();
        let fall_db = METER_FALL_DB_PER_S * ui.input(|input| input.stable_dt).min(0.1);
        self.meter_db = peak_db.max(self.meter_db - fall_db).max(SILENCE_DB);
        let v = &self.view;
        ui.label(egui::RichText::new(&v.state).size(20.0).strong());
        if let Some(error) = &v.error {
            ui.colored_label(RED, egui::RichText::new(error).size(16.0));
        }
        let buffer_ahead_s = f64::from(self.params.buffer_ahead.value());
        let waiting = matches!(v.readiness, Some(Readiness::Waiting { .. }));
        let health = (v.seconds_buffered / buffer_ahead_s.min(2.0)).clamp(0.0, 1.0) as f32;
        let health_color = if waiting || health < 0.25 { AMBER } else { GREEN };
        let level = (self.meter_db - SILENCE_DB) / -SILENCE_DB;
        let level_color = match self.meter_db {
            db if db >= -1.0 => RED,
            db if db >= -6.0 => AMBER,
            _ => GREEN,
        };
        ui.horizontal(|ui| {
            meter_bar(
                ui,
                health,
                health_color,
                &format!("{:.1} s ahead | {}", v.seconds_buffered, readiness_text(v.readiness)),
            );
            let level_text = if self.meter_db <= SILENCE_DB {
                "output: silent".to_owned()
            } else {
                format!("output {:.1} dBFS", self.meter_db)
            };
            meter_bar(ui, level, level_color, &level_text);
            let underruns = egui::RichText::new(format!("underruns {}", v.underruns)).size(18.0);
            if v.underruns > 0 {
                ui.label(underruns.color(RED).strong());
            } else {
                ui.label(underruns);
            }
        });
    }

    /// The bank's slots as a grid of buttons (the playing one lit), each with the note that
    /// chooses it, and the bank's menu: factory banks, load and save.
    fn slots(&mut self, ui: &mut egui::Ui) {
        if let Some((action, answer)) = self
            .bank_dialog
            .as_ref()
            .and_then(|(action, rx)| Some((*action, rx.try_recv().ok()?)))
        {
            self.bank_dialog = None;
            self.bank_message = match (action, answer.path) {
                (BankAction::Load, Some(path)) => Some(match PromptBank::load(&path) {
                    Ok(bank) => {
                        let message = format!("loaded {}", path.display());
                        *self.params.bank.write() = bank;
                        (message, false)
                    }
                    Err(error) => (error.to_string(), true),
                }),
                (BankAction::Save, Some(path)) => Some(match self.params.bank.read().save(&path) {
                    Ok(()) => (format!("saved {}", path.display()), false),
                    Err(error) => (error.to_string(), true),
                }),
                (_, None) if answer.open_for < NO_DIALOG_WITHIN => Some((NO_DIALOG.into(), true)),
                (_, None) => None,
            };
        }
        let (playing, queued) = (self.view.playing_slot, self.view.queued_slot);
        let morph_to = (!self.chosen_melody_model()).then(|| self.params.morph_slot());
        let first_note = self.params.first_slot_note.value();
        let bank = self.params.bank.read().clone();
        ui.horizontal(|ui| {
            ui.label("Bank");
            egui::ComboBox::from_id_salt("bank")
                .selected_text(&bank.name)
                .show_ui(ui, |ui| {
                    for factory in PromptBank::factory() {
                        if ui.selectable_label(factory.name == bank.name, &factory.name).clicked() {
                            *self.params.bank.write() = factory;
                        }
                    }
                });
            let idle = self.bank_dialog.is_none();
            if ui.add_enabled(idle, egui::Button::new("Load bank...")).clicked() {
                self.bank_dialog = Some((BankAction::Load, bank_file_dialog(BankAction::Load)));
            }
            if ui.add_enabled(idle, egui::Button::new("Save bank...")).clicked() {
                self.bank_dialog = Some((BankAction::Save, bank_file_dialog(BankAction::Save)));
            }
        });
        if let Some((message, is_error)) = &self.bank_message {
            let color = if *is_error { RED } else { ui.visuals().weak_text_color() };
            ui.colored_label(color, message);
        }
        // The slots share the window's width: a larger window makes larger pads.
        let columns = (SLOT_COUNT / 2) as f32;
        let spacing = ui.spacing().item_spacing.x;
        let pad_width = ((ui.available_width() - spacing * (columns - 1.0)) / columns).max(MIN_PAD_WIDTH);
        egui::Grid::new("slots").num_columns(SLOT_COUNT / 2).show(ui, |ui| {
            for (index, slot) in bank.slots.iter().enumerate() {
                let note = note_name(first_note + index as i32);
                let next = if queued == Some(index) { "  next" } else { "" };
                let target = if Some(index) == morph_to { "  morph B" } else { "" };
                let text =
                    egui::RichText::new(format!("{}  {}\n{note}{next}{target}", index + 1, slot.name)).size(17.0);
                let mut button = egui::Button::new(text)
                    .min_size(Vec2::new(pad_width, 50.0))
                    .selected(playing == Some(index));
                if queued == Some(index) {
                    button = button.fill(AMBER.gamma_multiply(0.5)).stroke(Stroke::new(2.0, AMBER));
                }
                let response = ui.add_enabled(!slot.prompt.trim().is_empty(), button);
                if response.on_hover_text(&slot.prompt).clicked() {
                    let _ = self.requests.send(Request::ChooseSlot(index));
                }
                if index % (SLOT_COUNT / 2) == SLOT_COUNT / 2 - 1 {
                    ui.end_row();
                }
            }
        });
    }

    fn chosen_melody_model(&self) -> bool {
        self.model_check.as_ref().is_ok_and(|chosen| chosen.melody)
    }

    /// *Follow sidechain melody*, for a melody model, with what it does.
    fn melody(&self, ui: &mut egui::Ui) {
        let Some(gui) = &self.gui else {
            return;
        };
        let setter = gui.param_setter();
        ui.horizontal(|ui| {
            ui.label(egui::RichText::new("Follow sidechain melody").size(22.0).strong());
            ui.add(ParamSlider::for_param(&self.params.follow_melody, &setter));
        });
        ui.label(
            "The music follows the melody of the sidechain's last Context window seconds, taken up at each \
             window slide and prompt change. A melody model holds its prompt in its context: a new prompt \
             starts the context again from the music so far (no morph).",
        );
    }

    /// The morph knob, with what it blends: the playing prompt (A) toward the *Morph to*
    /// slot (B).
    fn morph(&self, ui: &mut egui::Ui) {
        let Some(gui) = &self.gui else {
            return;
        };
        let setter = gui.param_setter();
        let p = &self.params;
        ui.horizontal(|ui| {
            knob(ui, &p.morph, &setter, MORPH_KNOB_PX).on_hover_text("Drag up or down; double-click: back to A");
            ui.vertical(|ui| {
                ui.label(egui::RichText::new(format!("Morph  {}", p.morph)).size(22.0).strong());
                let slot = p.morph_slot();
                let bank = p.bank.read();
                let target = match bank.prompt(slot) {
                    Some(_) => format!("slot {} {}", slot + 1, bank.slots[slot].name),
                    None => format!("slot {} (empty: no morph)", slot + 1),
                };
                ui.label(egui::RichText::new(format!("A: the playing prompt   to   B: {target}")).size(16.0));
                ui.horizontal(|ui| {
                    ui.label("Morph to");
                    ui.add(ParamSlider::for_param(&p.morph_to, &setter));
                });
            });
        });
    }

    fn parameters(&self, ui: &mut egui::Ui) {
        let Some(gui) = &self.gui else {
            return;
        };
        let setter = gui.param_setter();
        let p = &self.params;
        egui::Grid::new("parameters").num_columns(2).show(ui, |ui| {
            ui.label("Guidance");
            ui.add(ParamSlider::for_param(&p.guidance, &setter));
            ui.end_row();
            ui.label("Temperature");
            ui.add(ParamSlider::for_param(&p.temperature, &setter));
            ui.end_row();
            ui.label("Top-k");
            ui.add(ParamSlider::for_param(&p.top_k, &setter));
            ui.end_row();
            ui.label("Top-p");
            ui.add(ParamSlider::for_param(&p.top_p, &setter));
            ui.end_row();
            ui.label("Gain");
            ui.add(ParamSlider::for_param(&p.gain, &setter));
            ui.end_row();
            ui.label("Seed");
            ui.add(ParamSlider::for_param(&p.seed, &setter));
            ui.end_row();
            ui.label("Free run");
            ui.add(ParamSlider::for_param(&p.free_run, &setter));
            ui.end_row();
            ui.label("Prompt on next bar");
            ui.add(ParamSlider::for_param(&p.bar_sync, &setter));
            ui.end_row();
            ui.label("Tempo in prompt");
            ui.add(ParamSlider::for_param(&p.tempo_hint, &setter));
            ui.end_row();
            ui.label("Prompt crossfade");
            ui.add(ParamSlider::for_param(&p.prompt_crossfade, &setter));
            ui.end_row();
            ui.label("Context window");
            ui.add(ParamSlider::for_param(&p.window, &setter));
            ui.end_row();
            ui.label("Kept context");
            ui.add(ParamSlider::for_param(&p.keep, &setter));
            ui.end_row();
            ui.label("Buffer ahead");
            ui.add(ParamSlider::for_param(&p.buffer_ahead, &setter));
            ui.end_row();
            ui.label("Slot");
            ui.add(ParamSlider::for_param(&p.slot, &setter));
            ui.end_row();
            ui.label("Slot notes from");
            ui.add(ParamSlider::for_param(&p.first_slot_note, &setter));
            ui.end_row();
        });
    }

    fn model(&mut self, ui: &mut egui::Ui) {
        if let Some(answer) = self.browsing.as_ref().and_then(|rx| rx.try_recv().ok()) {
            self.browsing = None;
            match answer.path {
                Some(dir) => {
                    self.model_dir = dir.display().to_string();
                    self.choose_model();
                }
                None if answer.open_for < NO_DIALOG_WITHIN => {
                    self.model_check = Err(format!("{NO_DIALOG}; type the model folder's path instead"));
                }
                None => {}
            }
        }
        ui.horizontal(|ui| {
            ui.label("Model folder");
            let edit = ui.add(
                egui::TextEdit::singleline(&mut self.model_dir)
                    .hint_text("the bundled tiny model")
                    .desired_width(420.0),
            );
            if edit.lost_focus() {
                self.choose_model();
            }
            let browse = ui.add_enabled(self.browsing.is_none(), egui::Button::new("Browse..."));
            if browse.clicked() {
                self.browsing = Some(browse_for_folder(&self.model_dir));
            }
            if ui
                .selectable_label(self.get_model.open, "Get model...")
                .on_hover_text("Download one of Meta's MusicGen checkpoints and make a bundle of it")
                .clicked()
            {
                self.get_model.open = !self.get_model.open;
            }
        });
        match &self.model_check {
            Ok(chosen) => ui.weak(&chosen.description),
            Err(problem) => ui.colored_label(RED, problem),
        };
        if let Some(ready) = self.get_model.take_finished() {
            self.model_dir = ready.display().to_string();
            self.choose_model();
        }
        if self.get_model.open {
            ui.group(|ui| self.get_model.ui(ui));
        }
        ui.horizontal(|ui| {
            ui.label("Execution provider");
            let mut provider = *self.params.provider.read();
            egui::ComboBox::from_id_salt("provider")
                .selected_text(provider.name())
                .show_ui(ui, |ui| {
                    for choice in ExecutionProvider::ALL {
                        ui.selectable_value(&mut provider, choice, choice.name());
                    }
                });
            *self.params.provider.write() = provider;
            ui.label("(this, the context window, the kept context and the buffer ahead apply to the next stream)");
        });
    }

    /// Stores the folder in the edit box as the model (empty: the bundled one) and says
    /// now, not at the next Generate, when it is not a bundle.
    fn choose_model(&mut self) {
        let chosen = self.model_dir.trim().to_owned();
        self.model_check = describe_model(&chosen);
        *self.params.model_dir.write() = chosen;
    }

    fn status(&self, ui: &mut egui::Ui) {
        let v = &self.view;
        ui.label(format!(
            "provider {} | {:.1} steps/s",
            if v.provider.is_empty() { "-" } else { &v.provider },
            v.steps_per_second,
        ));
    }

    /// Codebooks as rows, frames as columns; each token coloured by the decoder step that
    /// produced it (from the model's pattern), so the delay pattern's diagonals are visible.
    fn pattern_view(&self, ui: &mut egui::Ui) {
        let frames = &self.view.recent_frames;
        let k_count = frames.first().map_or(4, |(_, codes)| codes.len());
        let (response, painter) = ui.allocate_painter(
            Vec2::new(ui.available_width(), 18.0 * k_count as f32 + 4.0),
            Sense::hover(),
        );
        let area = response.rect;
        painter.rect_filled(area, 2.0, Color32::from_gray(24));
        let shown = &frames[frames.len().saturating_sub(VIEW_FRAMES)..];
        let cell_w = area.width() / VIEW_FRAMES as f32;
        let cell_h = (area.height() - 4.0) / k_count as f32;
        let first_shown = shown.first().map_or(0, |(t, _)| *t);
        for (column, (t, codes)) in shown.iter().enumerate() {
            for (k, &code) in codes.iter().enumerate() {
                // Steps counted from the first frame shown: the same pattern over every
                // window of frames, shifted.
                let step = match &self.view.pattern {
                    Some(pattern) if t - first_shown < pattern.num_timesteps() => {
                        first_shown + pattern.step_of(Coord { t: t - first_shown, k })
                    }
                    _ => *t,
                };
                let hue = (step % 24) as f32 / 24.0;
                let brightness = 0.45 + 0.55 * (code % 64) as f32 / 63.0;
                let color = egui::ecolor::Hsva::new(hue, 0.7, brightness, 1.0);
                let min = area.min + Vec2::new(column as f32 * cell_w, 2.0 + k as f32 * cell_h);
                painter.rect_filled(
                    Rect::from_min_size(min, Vec2::new(cell_w.max(1.0), cell_h - 1.0)),
                    0.0,
                    color,
                );
            }
        }
        painter.rect_stroke(
            area,
            2.0,
            Stroke::new(1.0, Color32::from_gray(80)),
            egui::StrokeKind::Inside,
        );
    }
}

/// The narrowest a slot's pad gets; a narrower window scrolls sideways.
const MIN_PAD_WIDTH: f32 = 120.0;
/// The morph knob's diameter.
const MORPH_KNOB_PX: f32 = 84.0;
/// A knob's drag over its whole range, in points.
const KNOB_DRAG_PX: f32 = 200.0;

/// A rotary knob for `param`: dragged up or down, double-clicked back to its default, a
/// gesture to the host from the drag's start to its end (so one undo step, one automation
/// pass).
fn knob(ui: &mut egui::Ui, param: &FloatParam, setter: &ParamSetter, diameter_px: f32) -> egui::Response {
    let (rect, response) = ui.allocate_exact_size(Vec2::splat(diameter_px), Sense::click_and_drag());
    let value = param.unmodulated_normalized_value();
    if response.drag_started() {
        setter.begin_set_parameter(param);
    }
    if response.dragged() {
        let moved = -response.drag_delta().y / KNOB_DRAG_PX;
        setter.set_parameter_normalized(param, (value + moved).clamp(0.0, 1.0));
    }
    if response.drag_stopped() {
        setter.end_set_parameter(param);
    }
    if response.double_clicked() {
        setter.begin_set_parameter(param);
        setter.set_parameter(param, param.default_plain_value());
        setter.end_set_parameter(param);
    }
    // Angles from straight up, clockwise: the range spans 270 degrees.
    let (start, span) = (-0.75 * std::f32::consts::PI, 1.5 * std::f32::consts::PI);
    let center = rect.center();
    let radius = diameter_px / 2.0 - 5.0;
    let at = |angle: f32, r: f32| center + Vec2::new(angle.sin(), -angle.cos()) * r;
    // The arc from the range's start over `fraction` of it.
    let arc = |fraction: f32| -> Vec<_> {
        (0..=48)
            .map(|i| at(start + span * fraction * i as f32 / 48.0, radius))
            .collect()
    };
    let painter = ui.painter();
    painter.circle_filled(center, radius, ui.visuals().extreme_bg_color);
    painter.add(egui::Shape::line(
        arc(1.0),
        Stroke::new(5.0, ui.visuals().widgets.inactive.bg_fill),
    ));
    painter.add(egui::Shape::line(arc(value), Stroke::new(5.0, AMBER)));
    painter.line_segment(
        [center, at(start + span * value, radius - 8.0)],
        Stroke::new(3.0, ui.visuals().strong_text_color()),
    );
    response
}

/// A labelled horizontal bar, `fraction` full.
fn meter_bar(ui: &mut egui::Ui, fraction: f32, color: Color32, text: &str) {
    let (response, painter) = ui.allocate_painter(Vec2::new(250.0, 28.0), Sense::hover());
    let area = response.rect;
    painter.rect_filled(area, 3.0, Color32::from_gray(30));
    let mut filled = area;
    filled.set_width(area.width() * fraction.clamp(0.0, 1.0));
    painter.rect_filled(filled, 3.0, color.gamma_multiply(0.6));
    painter.text(
        area.left_center() + Vec2::new(8.0, 0.0),
        egui::Align2::LEFT_CENTER,
        text,
        egui::FontId::proportional(16.0),
        Color32::WHITE,
    );
}

const RED: Color32 = Color32::from_rgb(230, 90, 80);
const AMBER: Color32 = Color32::from_rgb(230, 170, 40);
const GREEN: Color32 = Color32::from_rgb(70, 180, 90);
/// The level meter's floor, and how fast it falls after a peak.
const SILENCE_DB: f32 = -60.0;
const METER_FALL_DB_PER_S: f32 = 20.0;
/// The editor redraws at 30 frames a second (only while it is open).
const REPAINT_EVERY: Duration = Duration::from_millis(33);
const SLOT_KEYS: [egui::Key; SLOT_COUNT] = [
    egui::Key::Num1,
    egui::Key::Num2,
    egui::Key::Num3,
    egui::Key::Num4,
    egui::Key::Num5,
    egui::Key::Num6,
    egui::Key::Num7,
    egui::Key::Num8,
];

/// What a bank file is chosen for.
#[derive(Clone, Copy)]
enum BankAction {
    Load,
    Save,
}

/// The *Get model...* panel: Meta's checkpoints, the licence, and one download at a time.
#[derive(Default)]
struct GetModel {
    open: bool,
    chosen: Option<usize>,
    precision: Option<Precision>,
    download: Option<ModelDownload>,
    problem: Option<String>,
}

impl GetModel {
    fn precision(&self) -> Precision {
        self.precision.unwrap_or(Precision::Int4)
    }

    /// The bundle of a download that has just finished, once.
    fn take_finished(&mut self) -> Option<PathBuf> {
        let Phase::Done(dir) = self.download.as_ref()?.phase() else {
            return None;
        };
        self.download = None;
        self.open = false;
        Some(dir)
    }

    fn ui(&mut self, ui: &mut egui::Ui) {
        ui.label("Meta's MusicGen checkpoints, from the Hugging Face hub (its cache is shared with Python's)");
        egui::Grid::new("official-checkpoints").striped(true).show(ui, |ui| {
            for (index, official) in OFFICIAL.iter().enumerate() {
                let label = ui.add_enabled(
                    official.importable(),
                    egui::Button::selectable(self.chosen == Some(index), official.repo),
                );
                if label.clicked() {
                    self.chosen = Some(index);
                }
                ui.label(official.description);
                ui.label(format!("{:.2} GB", official.weight_bytes as f64 / 1e9));
                ui.label(if official.importable() {
                    "imports"
                } else {
                    "no template yet"
                });
                ui.end_row();
            }
        });
        let Some(official) = self.chosen.map(|i| OFFICIAL[i]) else {
            return;
        };
        ui.separator();
        ui.add(egui::Label::new(format!("Real time needs {}.", official.realtime)).wrap());
        ui.add(egui::Label::new(format!("Licence: {LICENCE}")).wrap());
        let mut precision = self.precision();
        ui.horizontal(|ui| {
            ui.label("Weights");
            egui::ComboBox::from_id_salt("download-precision")
                .selected_text(precision_name(precision))
                .show_ui(ui, |ui| {
                    for choice in [Precision::Int4, Precision::Int8, Precision::Float32] {
                        ui.selectable_value(&mut precision, choice, precision_name(choice));
                    }
                });
        });
        self.precision = Some(precision);
        let installed = bundle_dir(official.repo, precision).filter(|dir| dir.join("musicgen.json").is_file());
        let busy = self
            .download
            .as_ref()
            .is_some_and(|d| !matches!(d.phase(), Phase::Failed(_)));
        let action = if installed.is_some() {
            "Use it (already downloaded)"
        } else {
            "Accept the licence and download"
        };
        if ui.add_enabled(!busy, egui::Button::new(action)).clicked() {
            self.problem = None;
            self.download = bundle_dir(official.repo, precision)
                .map(|out| ModelDownload::start(official.repo, precision, HubOptions::default(), out));
            if self.download.is_none() {
                self.problem = Some("this system names no data folder to keep models in".to_owned());
            }
        }
        if let Some(problem) = &self.problem {
            ui.colored_label(RED, problem);
        }
        let Some(download) = &self.download else { return };
        match download.phase() {
            Phase::Fetching {
                file,
                done_bytes,
                total_bytes,
            } => progress(ui, &format!("{}: {file}", download.repo), done_bytes, total_bytes),
            Phase::Importing {
                done_bytes,
                total_bytes,
            } => progress(ui, "making the bundle", done_bytes, total_bytes),
            Phase::Failed(message) => {
                ui.colored_label(RED, message);
            }
            Phase::Done(_) => {}
        }
    }
}

fn precision_name(precision: Precision) -> &'static str {
    match precision {
        Precision::Int4 => "4-bit (smallest, fastest on a CPU)",
        Precision::Int8 => "8-bit",
        Precision::Float32 => "float32 (exact; a GPU)",
    }
}

fn progress(ui: &mut egui::Ui, what: &str, done_bytes: u64, total_bytes: u64) {
    let fraction = if total_bytes == 0 {
        0.0
    } else {
        done_bytes as f32 / total_bytes as f32
    };
    let text = format!(
        "{what}: {:.1} of {:.1} MB",
        done_bytes as f64 / 1e6,
        total_bytes as f64 / 1e6
    );
    ui.add(egui::ProgressBar::new(fraction).text(text));
}

/// Opens the system's file dialog for a bank to load or to save, starting in the factory
/// banks' folder beside the plugin.
fn bank_file_dialog(action: BankAction) -> Receiver<Browsed> {
    let mut dialog = rfd::AsyncFileDialog::new().add_filter("Prompt bank", &["json"]);
    if let Some(banks) = resources_dir().map(|dir| dir.join("banks")).filter(|dir| dir.is_dir()) {
        dialog = dialog.set_directory(banks);
    }
    ask_in_dialog("musicgen-bank-dialog", move || match action {
        BankAction::Load => pollster::block_on(dialog.set_title("Load a prompt bank").pick_file()),
        BankAction::Save => pollster::block_on(dialog.set_title("Save the prompt bank").save_file()),
    })
}

/// What a file or folder dialog answered, and after how long.
struct Browsed {
    path: Option<PathBuf>,
    open_for: Duration,
}

/// A dialog that answers "nothing chosen" sooner than this was never shown: no person
/// cancels one this fast.
const NO_DIALOG_WITHIN: Duration = Duration::from_millis(300);
const NO_DIALOG: &str = "this system shows no file dialog (on Linux it needs xdg-desktop-portal)";

/// Shows a system dialog on its own thread, so that the editor keeps drawing; the answer
/// arrives on the returned channel.
fn ask_in_dialog(
    thread_name: &str,
    show: impl FnOnce() -> Option<rfd::FileHandle> + Send + 'static,
) -> Receiver<Browsed> {
    let (answer, answer_rx) = bounded(1);
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            let opened = Instant::now();
            let picked = show();
            let _ = answer.send(Browsed {
                path: picked.map(|handle| handle.path().to_path_buf()),
                open_for: opened.elapsed(),
            });
        })
        .expect("the OS can start a thread");
    answer_rx
}

/// A model folder that holds a bundle.
struct ChosenModel {
    /// Its name and family, for people.
    description: String,
    /// Conditioned on a melody as well as text.
    melody: bool,
}

/// The model in `chosen` (empty: the bundled one), as its manifest names it and its
/// family, or why it is not a bundle.
fn describe_model(chosen: &str) -> Result<ChosenModel, String> {
    let dir = if chosen.is_empty() {
        default_model_dir()
    } else {
        PathBuf::from(chosen)
    };
    let bundle = Bundle::open(&dir).map_err(|e| e.to_string())?;
    let manifest = bundle.manifest();
    Ok(ChosenModel {
        description: format!("{}: {}", manifest.model_name, manifest.describe_family()),
        melody: manifest.family().conditioning == Conditioning::TextAndMelody,
    })
}

/// Opens the system's folder dialog for a model folder, starting in `current`.
fn browse_for_folder(current: &str) -> Receiver<Browsed> {
    let mut dialog = rfd::AsyncFileDialog::new().set_title("Choose a MusicGen model folder");
    if let Some(dir) = Some(PathBuf::from(current.trim())).filter(|dir| dir.is_dir()) {
        dialog = dialog.set_directory(dir);
    }
    ask_in_dialog("musicgen-browse", move || pollster::block_on(dialog.pick_folder()))
}
