//! The API's OpenAPI 3 document (hand-written in `functions/query/openapi.json`), checked against the routes and parameters.

/// The OpenAPI document served at `/dragonfly/openapi.json`.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::families::MetricFamily;
    use crate::api::{METRIC_INFO, ROUTES};
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("the document is JSON")
    }

    fn enum_of(params: &Value, name: &str) -> Vec<String> {
        params
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))["schema"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn document_has_exactly_the_routes_and_their_parameters() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.0.3");
        let mut paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut routes = ROUTES.to_vec();
        paths.sort_unstable();
        routes.sort_unstable();
        assert_eq!(paths, routes, "OpenAPI paths and router routes differ");
        for (path, item) in doc["paths"].as_object().unwrap() {
            let ops: Vec<&String> = item.as_object().unwrap().keys().collect();
            assert_eq!(
                ops,
                ["get"],
                "{path} documents only GET, which is all it serves"
            );
        }
        let params = &doc["paths"][METRIC_INFO]["get"]["parameters"];
        assert_eq!(enum_of(params, "metric"), MetricFamily::names());
        assert_eq!(enum_of(params, "periodType"), ["m", "h", "d"]);
        assert_eq!(
            enum_of(params, "statisticsCriteria"),
            ["min", "max", "avg", "last"]
        );
        for p in params.as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let in_path = METRIC_INFO.contains(&format!("{{{name}}}"));
            assert_eq!(p["in"] == "path", in_path, "{name}");
        }
    }

    #[test]
    fn document_lists_every_field_of_every_family() {
        let doc = doc();
        let text = doc["components"]["schemas"]["MetricInfo"]["properties"]["values"]["items"]
            ["description"]
            .as_str()
            .unwrap();
        for family in MetricFamily::ALL {
            assert!(
                text.contains(&format!("{}:", family.name())),
                "{}",
                family.name()
            );
            for f in family.fields() {
                assert!(
                    text.contains(f.label),
                    "{} lacks {}",
                    family.name(),
                    f.label
                );
            }
        }
    }
}
