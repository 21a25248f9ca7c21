//! The models loaded in this process, shared by every plugin instance that plays the same
//! folder on the same provider: a DAW project with four instances of the instrument holds
//! one copy of the weights, and loads them once.
//!
//! The cache holds weak references, so a model is freed when the last stream and the last
//! instance using it let go. Loading happens on the caller's thread (an instance's
//! controller or its loader thread); two instances asking for the same model at once load
//! it once, the second waiting for the first.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};

use musicgen_engine::{Model, ModelError, ModelOptions};
use parking_lot::Mutex;

/// One model's place in the cache; its lock is held while the model loads.
type Slot = Arc<Mutex<Weak<Model>>>;

static MODELS: LazyLock<Mutex<HashMap<ModelOptions, Slot>>> = LazyLock::new(Default::default);

/// The model `options` name, loaded now unless an instance already holds it.
pub fn shared_model(options: &ModelOptions) -> Result<Arc<Model>, ModelError> {
    let key = canonical(options);
    let slot = {
        let mut models = MODELS.lock();
        // Forget the places of models nobody holds and nobody is loading.
        models.retain(|_, slot| Arc::strong_count(slot) > 1 || slot.lock().strong_count() > 0);
        Arc::clone(models.entry(key.clone()).or_default())
    };
    let mut held = slot.lock();
    if let Some(model) = held.upgrade() {
        return Ok(model);
    }
    let model = Arc::new(Model::load(key)?);
    *held = Arc::downgrade(&model);
    Ok(model)
}

/// `options` with the folder as the file system names it, so that two spellings of one
/// folder share a model.
fn canonical(options: &ModelOptions) -> ModelOptions {
    let mut key = options.clone();
    if let Ok(dir) = std::fs::canonicalize(&options.model_dir) {
        key.model_dir = dir;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::default_model_dir;

    #[test]
    fn instances_share_a_model_until_the_last_lets_go() {
        let mut options = ModelOptions::new(default_model_dir());
        options.decoder_threads = 1;
        let first = shared_model(&options).unwrap();
        // Another spelling of the same folder.
        options.model_dir = options.model_dir.join("../tiny");
        let second = shared_model(&options).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "one model for both");

        let weak = Arc::downgrade(&first);
        drop((first, second));
        assert!(weak.upgrade().is_none(), "freed once nobody uses it");
        let again = shared_model(&options).unwrap();
        assert_eq!(again.manifest().num_codebooks, 4, "loaded anew");
    }

    #[test]
    fn a_folder_that_is_not_a_model_is_an_error_and_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let err = shared_model(&ModelOptions::new(dir.path())).err().unwrap().to_string();
        assert!(err.contains("musicgen.json"), "{err}");
        assert!(shared_model(&ModelOptions::new(dir.path())).is_err());
    }
}
