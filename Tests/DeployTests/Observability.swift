import Foundation
import Testing
import TestSupport
import Yams

/// deploy/observability/: the rules, their unit tests and the dashboard, with every PromQL expression they hold.
enum Observability {
    static let directory = "deploy/observability"
    static let rulesPath = "\(directory)/p11kms-rules.yaml"
    static let dashboardPath = "\(directory)/p11kms-dashboard.json"
    static let prometheusConfigPath = "\(directory)/prometheus.yaml"
    static let testsDirectory = "\(directory)/tests"

    /// An expression and where it came from, for failure messages.
    struct Expression {
        let origin: String
        let promQL: String
    }

    struct Rule {
        let alert: String?
        let record: String?
        let expr: String
    }

    static func rules() throws -> [Rule] {
        let document = try #require(try Repository.yaml(rulesPath) as? [String: Any])
        let groups = try #require(document["groups"] as? [[String: Any]])
        return try groups.flatMap { group in
            try #require(group["rules"] as? [[String: Any]]).map {
                Rule(alert: $0["alert"] as? String, record: $0["record"] as? String, expr: try #require($0["expr"] as? String))
            }
        }
    }

    static func alertNames() throws -> [String] { try rules().compactMap(\.alert) }
    static func recordNames() throws -> Set<String> { Set(try rules().compactMap(\.record)) }

    static func ruleExpressions() throws -> [Expression] {
        try rules().map { Expression(origin: "\(rulesPath): \($0.alert ?? $0.record ?? "?")", promQL: $0.expr) }
    }

    static func dashboard() throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(Repository.text(dashboardPath).utf8)) as? [String: Any])
    }

    static func panels() throws -> [[String: Any]] {
        try #require(try dashboard()["panels"] as? [[String: Any]])
    }

    /// Every panel target's `expr` and the metric selector of every `label_values(...)` variable, with Grafana's
    /// variables replaced by values PromQL accepts.
    static func dashboardExpressions() throws -> [Expression] {
        var found: [Expression] = []
        for panel in try panels() {
            for target in panel["targets"] as? [[String: Any]] ?? [] {
                if let expr = target["expr"] as? String {
                    found.append(Expression(origin: "\(dashboardPath): panel \"\(panel["title"] ?? "")\"", promQL: grafanaToPromQL(expr)))
                }
            }
        }
        let templating = try #require(try dashboard()["templating"] as? [String: Any])
        for variable in templating["list"] as? [[String: Any]] ?? [] where variable["type"] as? String == "query" {
            let query = try #require((variable["query"] as? [String: Any])?["query"] as? String ?? variable["query"] as? String)
            guard query.hasPrefix("label_values("), let comma = query.lastIndex(of: ",") else {
                throw FixtureError("variable \(variable["name"] ?? ""): only label_values(selector, label) is used, got \(query)")
            }
            let selector = String(query[query.index(query.startIndex, offsetBy: "label_values(".count)..<comma])
            found.append(Expression(origin: "\(dashboardPath): variable \(variable["name"] ?? "")", promQL: grafanaToPromQL(selector)))
        }
        return found
    }

    /// The README's ```promql blocks: each expression follows a `#` comment line.
    static func readmeExpressions() throws -> [Expression] {
        var found: [Expression] = []
        for block in fencedBlocks(try Repository.text("README.md"), language: "promql") {
            var comment = ""
            var lines: [String] = []
            func flush() {
                if !lines.isEmpty { found.append(Expression(origin: "README.md: \(comment)", promQL: lines.joined(separator: "\n"))) }
                lines = []
            }
            for line in block.split(separator: "\n") {
                if line.hasPrefix("#") {
                    flush()
                    comment = String(line.dropFirst(2))
                } else {
                    lines.append(String(line))
                }
            }
            flush()
        }
        return found
    }

    static func grafanaToPromQL(_ expr: String) -> String {
        expr.replacingOccurrences(of: "$__rate_interval", with: "5m")
            .replacingOccurrences(of: "$job", with: ".*")
            .replacingOccurrences(of: "$instance", with: ".*")
    }

    /// The expressions as recording rules, so that `promtool check rules` parses each with Prometheus' own parser.
    static func asRuleFile(_ expressions: [Expression]) -> String {
        var text = "groups:\n  - name: parse-check\n    rules:\n"
        for (index, expression) in expressions.enumerated() {
            let quoted = expression.promQL.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                .replacingOccurrences(of: "\n", with: " ")
            text += "      - record: parse_check_\(index)\n        expr: \"\(quoted)\"\n"
        }
        return text
    }
}

/// Metric names in a PromQL expression: what remains once strings, label matchers, label lists of by/without/on/
/// ignoring/group_left/group_right, ranges and offsets are removed, minus functions, operators and keywords.
enum PromQLNames {
    static let keywords: Set<String> = [
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan",
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "atan2",
    ]

    static func metricNames(_ expr: String) -> Set<String> {
        var text = replace(expr, #""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`"#, with: "\"\"")
        text = replace(text, #"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"#, with: " $1 ")
        text = replace(text, #"\{[^}]*\}"#, with: " ")
        text = replace(text, #"\[[^\]]*\]"#, with: " ")
        text = replace(text, #"\boffset\s+-?[0-9a-z]+"#, with: " ")
        var names = Set<String>()
        let token = try! NSRegularExpression(pattern: #"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?"#)
        let ns = text as NSString
        for match in token.matches(in: text, range: NSRange(location: 0, length: ns.length)) {
            let word = ns.substring(with: match.range)
            if word.hasSuffix("(") { continue }
            // A token glued to a preceding digit or dot is part of a number (1e9, 0.5) or a duration (5m).
            if match.range.location > 0 {
                let previous = ns.substring(with: NSRange(location: match.range.location - 1, length: 1))
                if previous.first.map({ $0.isNumber || $0 == "." }) == true { continue }
            }
            if !keywords.contains(word) { names.insert(word) }
        }
        return names
    }

    private static func replace(_ text: String, _ pattern: String, with template: String) -> String {
        let regex = try! NSRegularExpression(pattern: pattern)
        return regex.stringByReplacingMatches(in: text, range: NSRange(text.startIndex..., in: text), withTemplate: template)
    }
}

/// Debian's promtool (package `prometheus`, installed by scripts/install-deps.sh).
enum Promtool {
    static let path = "/usr/bin/promtool"

    static func run(_ arguments: [String], stdin: String? = nil) throws -> Command.Result {
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw FixtureError("\(path) is missing: run scripts/install-deps.sh (Debian package prometheus)")
        }
        return try Command.run(path, arguments, stdin: stdin)
    }
}
