//! Graph templates: the bundle graphs the export makes for one architecture and precision,
//! with the weights taken out and a recipe for each (`models/template.py` writes them; they
//! live in `models/templates/<shape>/<precision>/` and are embedded in the library).

use serde::Deserialize;
use serde_json::Value;

use crate::recipe::{Recipe, RecipeError};

include!(concat!(env!("OUT_DIR"), "/templates.rs"));

/// The template format this build reads.
const FORMAT_VERSION: u64 = 1;

/// One template's files, as embedded.
pub(crate) struct CarriedTemplate {
    pub name: &'static str,
    pub files: &'static [(&'static str, &'static [u8])],
}

/// The weights' precision in the bundle an import writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Float32,
    Int8,
    Int4,
}

impl Precision {
    /// The name of the template folder and of the manifest's `quantization.weights`.
    pub fn folder(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
        }
    }
}

/// A config field whose value differs from a template's architecture.
#[derive(Debug)]
pub struct Mismatch {
    /// `part.field`, as `decoder.num_hidden_layers`.
    pub field: String,
    /// The config's value (JSON), or `missing`.
    pub found: String,
    /// The template's value (JSON).
    pub expected: String,
}

/// A weight of a template's graph.
#[derive(Debug)]
pub struct TemplateTensor {
    pub graph: String,
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub offset: u64,
    pub length: u64,
    pub recipe: Recipe,
}

/// A parsed template.
pub struct Template {
    pub name: &'static str,
    pub architecture: serde_json::Map<String, Value>,
    /// `musicgen.json` without its `model_name`.
    pub manifest: serde_json::Map<String, Value>,
    pub tensors: Vec<TemplateTensor>,
    /// The graph files (`decoder.onnx`, ...) with their bytes.
    pub graphs: Vec<(&'static str, &'static [u8])>,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name}: {problem}; this build carries a broken template, rebuild it (`cargo xtask templates`)")]
    Broken { name: &'static str, problem: String },
    #[error("template {name}, tensor {tensor}: {source}")]
    Recipe {
        name: &'static str,
        tensor: String,
        source: RecipeError,
    },
}

#[derive(Deserialize)]
struct RawTemplate {
    format_version: u64,
    architecture: serde_json::Map<String, Value>,
    manifest: serde_json::Map<String, Value>,
    tensors: Vec<RawTensor>,
}

#[derive(Deserialize)]
struct RawTensor {
    graph: String,
    name: String,
    dtype: String,
    shape: Vec<usize>,
    offset: u64,
    length: u64,
    recipe: Value,
}

impl Template {
    fn parse(carried: &CarriedTemplate) -> Result<Template, TemplateError> {
        let broken = |problem: String| TemplateError::Broken {
            name: carried.name,
            problem,
        };
        let json = carried
            .files
            .iter()
            .find(|(file, _)| *file == "template.json")
            .ok_or_else(|| broken("no template.json".to_owned()))?
            .1;
        let raw: RawTemplate = serde_json::from_slice(json).map_err(|e| broken(e.to_string()))?;
        if raw.format_version != FORMAT_VERSION {
            return Err(broken(format!("format version {}", raw.format_version)));
        }
        let tensors = raw
            .tensors
            .into_iter()
            .map(|t| {
                let recipe = Recipe::from_json(&t.recipe).map_err(|source| TemplateError::Recipe {
                    name: carried.name,
                    tensor: t.name.clone(),
                    source,
                })?;
                Ok(TemplateTensor {
                    graph: t.graph,
                    name: t.name,
                    dtype: t.dtype,
                    shape: t.shape,
                    offset: t.offset,
                    length: t.length,
                    recipe,
                })
            })
            .collect::<Result<Vec<_>, TemplateError>>()?;
        let graphs = carried
            .files
            .iter()
            .filter(|(file, _)| file.ends_with(".onnx"))
            .copied()
            .collect();
        Ok(Template {
            name: carried.name,
            architecture: raw.architecture,
            manifest: raw.manifest,
            tensors,
            graphs,
        })
    }

    /// The config fields of this template's architecture that `config` gives otherwise.
    pub fn mismatches(&self, config: &Value) -> Vec<Mismatch> {
        let mut found = Vec::new();
        for (part, fields) in &self.architecture {
            let Some(fields) = fields.as_object() else { continue };
            // `model`: the config's own top-level fields.
            let scope = if part == "model" {
                Some(config)
            } else {
                config.get(part)
            };
            for (field, want) in fields {
                let have = scope.and_then(|p| p.get(field));
                if !same_value(have, want) {
                    found.push(Mismatch {
                        field: format!("{part}.{field}"),
                        found: have.map_or_else(|| "missing".to_owned(), Value::to_string),
                        expected: want.to_string(),
                    });
                }
            }
        }
        found
    }

    /// Whether the template is a melody model's (its architecture names the model's own
    /// fields, `model`).
    pub fn is_melody(&self) -> bool {
        self.architecture.contains_key("model")
    }

    /// The shape the template was made for (`musicgen-small`, ...).
    pub fn shape(&self) -> &'static str {
        shape_of(self.name)
    }
}

/// JSON equality, but with numbers compared as numbers (`1e-06` is `0.000001`).
fn same_value(have: Option<&Value>, want: &Value) -> bool {
    match (have, want) {
        (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Some(Value::Array(a)), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(Some(x), y))
        }
        (Some(a), b) => a == b,
        (None, Value::Null) => true,
        (None, _) => false,
    }
}

/// `musicgen-small` of a template named `musicgen-small/int4`.
fn shape_of(name: &'static str) -> &'static str {
    name.split('/').next().unwrap_or(name)
}

/// The templates this build carries at `precision`, parsed.
pub fn carried(precision: Precision) -> Result<Vec<Template>, TemplateError> {
    let suffix = format!("/{}", precision.folder());
    CARRIED
        .iter()
        .filter(|t| t.name.ends_with(&suffix))
        .map(Template::parse)
        .collect()
}

/// The carried templates' shapes, each once, for messages.
pub fn carried_shapes() -> Vec<&'static str> {
    let mut shapes: Vec<&'static str> = CARRIED.iter().map(|t| shape_of(t.name)).collect();
    shapes.dedup();
    shapes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_carried_template_parses_and_tiny_is_among_them() {
        let templates: Vec<Template> = [Precision::Float32, Precision::Int8, Precision::Int4]
            .into_iter()
            .flat_map(|precision| carried(precision).unwrap())
            .collect();
        assert_eq!(templates.len(), CARRIED.len());
        assert!(templates.iter().any(|t| t.name == "tiny/float32"));
        for template in &templates {
            assert!(!template.tensors.is_empty(), "{}", template.name);
            for tensor in &template.tensors {
                assert!(
                    template.graphs.iter().any(|(file, _)| *file == tensor.graph),
                    "{}: {} names graph {}",
                    template.name,
                    tensor.name,
                    tensor.graph
                );
            }
        }
    }

    #[test]
    fn numbers_compare_by_value() {
        let config = serde_json::json!({"text_encoder": {"layer_norm_epsilon": 0.000001}});
        assert!(same_value(
            config["text_encoder"].get("layer_norm_epsilon"),
            &serde_json::json!(1e-6)
        ));
        assert!(!same_value(None, &serde_json::json!(2)));
    }
}
