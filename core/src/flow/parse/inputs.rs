//! The flow's `inputs`: names, types, defaults and descriptions.

use marked_yaml::Node;

use super::Parser;
use super::nodes::{to_json, valid_identifier};
use crate::flow::model::{InputSpec, InputType};

const INPUT_FIELDS: &[&str] = &["type", "default", "description"];

impl Parser<'_> {
    pub(super) fn inputs(&mut self, node: &Node) -> Vec<InputSpec> {
        let Some(map) = self.mapping(node, "`inputs`") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in map.iter() {
            let name = key.as_str().to_owned();
            if !valid_identifier(&name) {
                self.err(key.span(), format!("input name `{name}` must start with a letter or `_` and use only letters, digits and `_`"));
            }
            let Some(spec) = value.as_mapping() else {
                // Shorthand: `name: default-value`.
                out.push(InputSpec {
                    name,
                    ty: InputType::Any,
                    default: Some(to_json(value)),
                    description: String::new(),
                });
                continue;
            };
            self.check_fields(spec, INPUT_FIELDS, &format!("input `{name}`"));
            let ty = match spec.get_node("type") {
                Some(t) => match self.string(t, "`type`") {
                    Some(s) => InputType::from_name(&s).unwrap_or_else(|| {
                        self.err(
                            t.span(),
                            format!(
                                "unknown input type `{s}` (expected one of: {})",
                                InputType::NAMES.join(", ")
                            ),
                        );
                        InputType::Any
                    }),
                    None => InputType::Any,
                },
                None => InputType::Any,
            };
            let default = spec.get_node("default").map(to_json);
            if let (Some(d), Some(node)) = (&default, spec.get_node("default"))
                && !ty.accepts(d)
            {
                self.err(
                    node.span(),
                    format!("default of input `{name}` is not of type `{}`", ty.name()),
                );
            }
            let description = spec
                .get_node("description")
                .and_then(|n| self.string(n, "`description`"))
                .unwrap_or_default();
            out.push(InputSpec {
                name,
                ty,
                default,
                description,
            });
        }
        out
    }
}
