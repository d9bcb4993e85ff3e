//! Element order of merged lists (upstream's "preserve order in strategic merge patch"):
//! items named by the patch follow the patch's (or `$setElementOrder`'s) order, items only on
//! the server keep their live order, and the two are interleaved by their live positions.

use serde_json::Value;

use super::strategic::SmpError;

/// The identity of a list element: its merge key's value for maps, itself for scalars.
fn identity<'a>(v: &'a Value, merge_key: &str) -> Option<&'a Value> {
    if merge_key.is_empty() { Some(v) } else { v.get(merge_key) }
}

fn index(list: &[Value], item: &Value, merge_key: &str) -> Option<usize> {
    let id = identity(item, merge_key);
    list.iter().position(|v| identity(v, merge_key) == id)
}

fn require_key(list: &[Value], merge_key: &str) -> Result<(), SmpError> {
    if merge_key.is_empty() {
        return Ok(());
    }
    for v in list {
        if v.get(merge_key).is_none() {
            return Err(SmpError { code: 422, message: format!("map: {v} does not contain declared merge key: {merge_key}") });
        }
    }
    Ok(())
}

/// Splits `merged` into the items present in `by` and the rest, keeping their order.
pub fn partition(merged: Vec<Value>, by: &[Value], merge_key: &str) -> Result<(Vec<Value>, Vec<Value>), SmpError> {
    require_key(&merged, merge_key)?;
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for v in merged {
        if index(by, &v, merge_key).is_some() { inside.push(v) } else { outside.push(v) }
    }
    Ok((inside, outside))
}

/// Sorts `patch_items` by `patch_order` and `server_only` by `server_order`, then interleaves
/// them: a server-only item goes before the next patch item when the live list had it first.
pub fn normalize_element_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: &str,
) -> Result<Vec<Value>, SmpError> {
    let right = sort_by_order(patch_items, patch_order, merge_key)?;
    let left = sort_by_order(server_only, server_order, merge_key)?;
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                matches!((index(server_order, l, merge_key), index(server_order, r, merge_key)), (Some(li), Some(ri)) if li < ri)
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

fn sort_by_order(mut items: Vec<Value>, order: &[Value], merge_key: &str) -> Result<Vec<Value>, SmpError> {
    let mut deletions = Vec::new();
    if !merge_key.is_empty() {
        require_key(&items, merge_key)?;
        require_key(order, merge_key)?;
        let (keep, del): (Vec<Value>, Vec<Value>) =
            items.into_iter().partition(|v| v.get("$patch").and_then(Value::as_str) != Some("delete"));
        items = keep;
        deletions = del;
    }
    // Stable: items the order does not name keep their relative place at the end.
    items.sort_by_key(|v| index(order, v, merge_key).unwrap_or(usize::MAX));
    items.extend(deletions);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(v: &[Value]) -> Vec<&str> {
        v.iter().map(|x| x["name"].as_str().unwrap()).collect()
    }

    #[test]
    fn new_patch_items_land_after_the_last_patch_item() {
        let live = vec![json!({"name": "a"}), json!({"name": "b"}), json!({"name": "c"})];
        let patch = vec![json!({"name": "b"}), json!({"name": "d"})];
        let merged = vec![json!({"name": "a"}), json!({"name": "b"}), json!({"name": "c"}), json!({"name": "d"})];
        let (inside, outside) = partition(merged, &patch, "name").unwrap();
        let out = normalize_element_order(inside, outside, &patch, &live, "name").unwrap();
        assert_eq!(names(&out), ["a", "b", "d", "c"]);
    }

    #[test]
    fn explicit_order_wins_and_server_only_items_keep_their_place() {
        let live = vec![json!({"name": "a"}), json!({"name": "x"}), json!({"name": "b"})];
        let order = vec![json!({"name": "b"}), json!({"name": "a"})];
        let (inside, outside) = partition(live.clone(), &order, "name").unwrap();
        let out = normalize_element_order(inside, outside, &order, &live, "name").unwrap();
        // x came before b on the server, so it stays ahead of the reordered pair.
        assert_eq!(names(&out), ["x", "b", "a"]);
    }

    #[test]
    fn scalars_order_by_value() {
        let live = vec![json!("a"), json!("b")];
        let order = vec![json!("b"), json!("c"), json!("a")];
        let merged = vec![json!("a"), json!("b"), json!("c")];
        let (inside, outside) = partition(merged, &order, "").unwrap();
        let out = normalize_element_order(inside, outside, &order, &live, "").unwrap();
        assert_eq!(out, vec![json!("b"), json!("c"), json!("a")]);
    }

    #[test]
    fn missing_merge_key_is_an_error() {
        let err = partition(vec![json!({"image": "x"})], &[], "name").unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("does not contain declared merge key: name"), "{}", err.message);
    }
}
