import Foundation

/// Sheaf's pictures: self-contained SVG a browser shows as is (no scripts, no external fonts).
public enum SVG {
    /// Text with the five XML specials escaped.
    public static func escape(_ s: String) -> String {
        var out = ""
        for ch in s {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(ch)
            }
        }
        return out
    }

    /// A colour of the viridis map for t in [0, 1] (dark blue-violet → green → yellow), by linear
    /// interpolation between nine stops: perceptually ordered and readable in grey.
    public static func viridis(_ t: Double) -> String {
        let stops: [(Double, Double, Double)] = [
            (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141), (39, 173, 129), (92, 200, 99), (170, 220, 50),
            (253, 231, 37),
        ]
        let x = min(max(t.isFinite ? t : 0, 0), 1) * Double(stops.count - 1)
        let i = min(Int(x), stops.count - 2), f = x - Double(i)
        let (a, b) = (stops[i], stops[i + 1])
        func mix(_ u: Double, _ v: Double) -> Int { Int((u + (v - u) * f).rounded()) }
        return String(format: "#%02x%02x%02x", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }

    /// The opening of a picture: its size, a white background, a bold title and a subtitle line.
    static func header(width: Double, height: Double, title: String, subtitle: String) -> String {
        """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" \
        font-family="Helvetica, Arial, sans-serif" font-size="11">
        <rect width="100%" height="100%" fill="white"/>
        <text x="18" y="22" font-size="14" font-weight="bold">\(escape(title))</text>
        <text x="18" y="40" font-size="12">\(escape(subtitle))</text>

        """
    }

    /// Four significant digits, without trailing zeros.
    static func number(_ x: Double) -> String { String(format: "%.4g", x) }

    /// A heat map: `values[row][column]` coloured on viridis from the smallest to the largest
    /// finite value (nil cells grey, explained by `emptyLabel`), rows top to bottom, with the
    /// cells in `marked` crossed out and explained by `markLabel`, axis titles, tick labels and a
    /// colour bar with its title and unit.
    public struct HeatMap {
        public var title: String
        /// A second, smaller title line (the settings), or "".
        public var subtitle: String = ""
        public var values: [[Double?]]
        public var rowTitle: String
        public var columnTitle: String
        public var rowLabels: [String]
        public var columnLabels: [String]
        public var colorTitle: String
        public var marked: Set<[Int]> = []
        public var markLabel: String = ""
        /// Cells with a dot (a second, independent marker) and its legend line.
        public var dotted: Set<[Int]> = []
        public var dotLabel: String = ""
        public var emptyLabel: String = ""

        public init(
            title: String, values: [[Double?]], rowTitle: String, columnTitle: String, rowLabels: [String], columnLabels: [String],
            colorTitle: String
        ) {
            (self.title, self.values, self.rowTitle, self.columnTitle) = (title, values, rowTitle, columnTitle)
            (self.rowLabels, self.columnLabels, self.colorTitle) = (rowLabels, columnLabels, colorTitle)
        }

        public func render() -> String {
            let rows = values.count, cols = values.first?.count ?? 0
            let finite = values.flatMap { $0.compactMap { $0 } }.filter(\.isFinite)
            let lo = finite.min() ?? 0, hi = finite.max() ?? 1
            let span = hi > lo ? hi - lo : 1
            let cellW = max(18.0, min(48.0, 480.0 / Double(max(cols, 1)))), cellH = max(12.0, min(24.0, 540.0 / Double(max(rows, 1))))
            let left = 70.0, top = subtitle.isEmpty ? 48.0 : 64.0, plotW = cellW * Double(cols), plotH = cellH * Double(rows)
            let barX = left + plotW + 40, barW = 16.0
            // Text widths estimated at 0.6 em (Helvetica's mean is below that).
            let titleRight: Double = 18 + 8.4 * Double(title.count), subtitleRight: Double = 18 + 7.2 * Double(subtitle.count)
            let legendRight: Double = left + 20 + 6.6 * Double(max(markLabel.count, emptyLabel.count, dotLabel.count))
            let textRight = max(titleRight, subtitleRight, legendRight)
            let width = max(barX + barW + 104, textRight) + 12, height = top + plotH + 114
            var s = SVG.header(width: width, height: height, title: title, subtitle: subtitle)
            for r in 0..<rows {
                for c in 0..<cols {
                    let x = left + Double(c) * cellW, y = top + Double(r) * cellH
                    let fill = values[r][c].map { $0.isFinite ? viridis(($0 - lo) / span) : "#bbbbbb" } ?? "#d9d9d9"
                    let tip = values[r][c].map { "\(rowLabels[r]), \(columnLabels[c]): \(number($0))" } ?? "\(rowLabels[r]), \(columnLabels[c]): \(emptyLabel)"
                    s += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(cellW)\" height=\"\(cellH)\" fill=\"\(fill)\" stroke=\"white\" stroke-width=\"0.5\"><title>\(escape(tip))</title></rect>\n"
                    if marked.contains([r, c]) {
                        s += "<path d=\"M\(x + 3) \(y + 3)L\(x + cellW - 3) \(y + cellH - 3)M\(x + cellW - 3) \(y + 3)L\(x + 3) \(y + cellH - 3)\" stroke=\"white\" stroke-width=\"2.5\"/>"
                        s += "<path d=\"M\(x + 3) \(y + 3)L\(x + cellW - 3) \(y + cellH - 3)M\(x + cellW - 3) \(y + 3)L\(x + 3) \(y + cellH - 3)\" stroke=\"black\" stroke-width=\"1.2\"/>\n"
                    }
                    if dotted.contains([r, c]) {
                        s += "<circle cx=\"\(x + cellW / 2)\" cy=\"\(y + cellH / 2)\" r=\"\(min(cellW, cellH) / 5)\" fill=\"black\" stroke=\"white\" stroke-width=\"1.2\"/>\n"
                    }
                }
            }
            // Axes: tick labels every row/column when they fit, else every few.
            let rowStep = max(1, Int((12 / cellH).rounded(.up))), colStep = max(1, Int((28 / cellW).rounded(.up)))
            for r in stride(from: 0, to: rows, by: rowStep) {
                s += "<text x=\"\(left - 6)\" y=\"\(top + (Double(r) + 0.5) * cellH + 4)\" text-anchor=\"end\">\(escape(rowLabels[r]))</text>\n"
            }
            for c in stride(from: 0, to: cols, by: colStep) {
                s += "<text x=\"\(left + (Double(c) + 0.5) * cellW)\" y=\"\(top + plotH + 16)\" text-anchor=\"middle\">\(escape(columnLabels[c]))</text>\n"
            }
            s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotW)\" height=\"\(plotH)\" fill=\"none\" stroke=\"black\" stroke-width=\"1\"/>\n"
            s += "<text x=\"\(left + plotW / 2)\" y=\"\(top + plotH + 36)\" text-anchor=\"middle\" font-size=\"12\">\(escape(columnTitle))</text>\n"
            s += "<text transform=\"translate(18 \(top + plotH / 2)) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">\(escape(rowTitle))</text>\n"
            // Colour bar: hi at the top.
            let steps = 64
            for i in 0..<steps {
                let y = top + plotH * Double(i) / Double(steps)
                s += "<rect x=\"\(barX)\" y=\"\(y)\" width=\"\(barW)\" height=\"\(plotH / Double(steps) + 0.5)\" fill=\"\(viridis(1 - (Double(i) + 0.5) / Double(steps)))\"/>"
            }
            s += "\n<rect x=\"\(barX)\" y=\"\(top)\" width=\"\(barW)\" height=\"\(plotH)\" fill=\"none\" stroke=\"black\" stroke-width=\"0.8\"/>\n"
            for k in 0...4 {
                let t = Double(k) / 4, y = top + plotH * (1 - t)
                s += "<line x1=\"\(barX + barW)\" y1=\"\(y)\" x2=\"\(barX + barW + 4)\" y2=\"\(y)\" stroke=\"black\"/>"
                s += "<text x=\"\(barX + barW + 7)\" y=\"\(y + 4)\">\(number(lo + t * span))</text>\n"
            }
            s += "<text transform=\"translate(\(barX + barW + 84) \(top + plotH / 2)) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">\(escape(colorTitle))</text>\n"
            // Legend for the marks and the empty cells.
            var legendY = top + plotH + 58
            if !markLabel.isEmpty {
                s += "<rect x=\"\(left)\" y=\"\(legendY - 10)\" width=\"14\" height=\"12\" fill=\"\(viridis(0.5))\"/>"
                s += "<path d=\"M\(left + 2) \(legendY - 8)L\(left + 12) \(legendY)M\(left + 12) \(legendY - 8)L\(left + 2) \(legendY)\" stroke=\"black\" stroke-width=\"1.2\"/>"
                s += "<text x=\"\(left + 20)\" y=\"\(legendY)\">\(escape(markLabel))</text>\n"
                legendY += 18
            }
            if !dotLabel.isEmpty {
                s += "<rect x=\"\(left)\" y=\"\(legendY - 10)\" width=\"14\" height=\"12\" fill=\"\(viridis(0.5))\"/>"
                s += "<circle cx=\"\(left + 7)\" cy=\"\(legendY - 4)\" r=\"2.6\" fill=\"black\" stroke=\"white\" stroke-width=\"1.2\"/>"
                s += "<text x=\"\(left + 20)\" y=\"\(legendY)\">\(escape(dotLabel))</text>\n"
                legendY += 18
            }
            if !emptyLabel.isEmpty, values.contains(where: { $0.contains { $0 == nil } }) {
                s += "<rect x=\"\(left)\" y=\"\(legendY - 10)\" width=\"14\" height=\"12\" fill=\"#d9d9d9\"/>"
                s += "<text x=\"\(left + 20)\" y=\"\(legendY)\">\(escape(emptyLabel))</text>\n"
            }
            return s + "</svg>\n"
        }
    }
}

extension SVG {
    /// A line plot: series of (x, y) points joined in x order, each with its colour, marker and
    /// legend entry; horizontal reference lines; linear x axis, linear or log₁₀ y axis, with
    /// ticks, axis titles (with units) and a legend.
    public struct LinePlot {
        public struct Series {
            public var label: String
            public var points: [(x: Double, y: Double)]
            /// Joined by a line (false: markers only, e.g. published reference points).
            public var joined: Bool
            public init(label: String, points: [(x: Double, y: Double)], joined: Bool = true) {
                (self.label, self.points, self.joined) = (label, points, joined)
            }
        }

        public var title: String
        public var subtitle: String = ""
        public var xTitle: String
        public var yTitle: String
        public var logY: Bool
        public var series: [Series] = []
        /// Horizontal lines across the plot (a dense model's perplexity), with their labels.
        public var horizontals: [(y: Double, label: String)] = []

        public init(title: String, xTitle: String, yTitle: String, logY: Bool) {
            (self.title, self.xTitle, self.yTitle, self.logY) = (title, xTitle, yTitle, logY)
        }

        static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]

        /// "Nice" tick values covering [lo, hi]: steps of 1, 2 or 5 × 10ⁿ.
        static func ticks(_ lo: Double, _ hi: Double, count: Int = 6) -> [Double] {
            guard hi > lo else { return [lo] }
            let raw = (hi - lo) / Double(count), magnitude = pow(10, floor(log10(raw)))
            let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= raw } ?? 10 * magnitude
            var t = ceil(lo / step) * step, out: [Double] = []
            while t <= hi + step * 1e-9 {
                out.append(abs(t) < step * 1e-9 ? 0 : t)
                t += step
            }
            return out
        }

        public func render() -> String {
            let all = series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite && (!logY || $0.y > 0) }
            let ys = all.map(\.y) + horizontals.map(\.y).filter { !logY || $0 > 0 }
            var (x0, x1) = (all.map(\.x).min() ?? 0, all.map(\.x).max() ?? 1)
            var (y0, y1) = (ys.min() ?? 1, ys.max() ?? 10)
            if x1 <= x0 { (x0, x1) = (x0 - 0.05, x1 + 0.05) }
            let padX = (x1 - x0) * 0.05
            (x0, x1) = (max(0, x0 - padX), x1 + padX)
            func fy(_ y: Double) -> Double { logY ? log10(y) : y }
            var (v0, v1) = (fy(y0), fy(y1))
            if v1 <= v0 { (v0, v1) = (v0 - 0.5, v1 + 0.5) }
            let padY = (v1 - v0) * 0.06
            (v0, v1) = (v0 - padY, v1 + padY)
            if logY { (y0, y1) = (pow(10, v0), pow(10, v1)) } else { (y0, y1) = (v0, v1) }
            let left = 78.0, top = subtitle.isEmpty ? 48.0 : 64.0, plotW = 560.0, plotH = 380.0
            let legendX = left + plotW + 24
            let legendChars = (series.map(\.label) + horizontals.map(\.label)).map(\.count).max() ?? 0
            let width = max(legendX + 40 + 6.6 * Double(legendChars), 18 + 8.4 * Double(title.count), 18 + 7.2 * Double(subtitle.count)) + 12
            let height = top + plotH + 64
            func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * plotW }
            func py(_ y: Double) -> Double { top + plotH - (fy(y) - v0) / (v1 - v0) * plotH }
            var s = SVG.header(width: width, height: height, title: title, subtitle: subtitle)
            // Grid and ticks.
            for t in Self.ticks(x0, x1) {
                let x = px(t)
                s += "<line x1=\"\(x)\" y1=\"\(top)\" x2=\"\(x)\" y2=\"\(top + plotH)\" stroke=\"#e6e6e6\"/>"
                s += "<text x=\"\(x)\" y=\"\(top + plotH + 16)\" text-anchor=\"middle\">\(number(t))</text>\n"
            }
            var yTicks: [Double]
            if logY {
                yTicks = []
                for e in Int(floor(v0))...Int(ceil(v1)) {
                    for m in [1.0, 2, 5] where fy(m * pow(10, Double(e))) >= v0 && fy(m * pow(10, Double(e))) <= v1 { yTicks.append(m * pow(10, Double(e))) }
                }
            } else {
                yTicks = Self.ticks(v0, v1)
            }
            for t in yTicks {
                let y = py(t)
                s += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + plotW)\" y2=\"\(y)\" stroke=\"#e6e6e6\"/>"
                s += "<text x=\"\(left - 6)\" y=\"\(y + 4)\" text-anchor=\"end\">\(number(t))</text>\n"
            }
            s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotW)\" height=\"\(plotH)\" fill=\"none\" stroke=\"black\"/>\n"
            s += "<text x=\"\(left + plotW / 2)\" y=\"\(top + plotH + 40)\" text-anchor=\"middle\" font-size=\"12\">\(escape(xTitle))</text>\n"
            s += "<text transform=\"translate(20 \(top + plotH / 2)) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">\(escape(yTitle))</text>\n"
            var legendY = top + 8
            for h in horizontals where !logY || h.y > 0 {
                let y = py(h.y)
                s += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + plotW)\" y2=\"\(y)\" stroke=\"black\" stroke-dasharray=\"6 4\" stroke-width=\"1.2\"/>\n"
                s += "<line x1=\"\(legendX)\" y1=\"\(legendY)\" x2=\"\(legendX + 28)\" y2=\"\(legendY)\" stroke=\"black\" stroke-dasharray=\"6 4\" stroke-width=\"1.2\"/>"
                s += "<text x=\"\(legendX + 36)\" y=\"\(legendY + 4)\">\(escape(h.label))</text>\n"
                legendY += 18
            }
            for (i, series) in series.enumerated() {
                let colour = Self.palette[i % Self.palette.count]
                let points = series.points.filter { $0.x.isFinite && $0.y.isFinite && (!logY || $0.y > 0) }.sorted { $0.x < $1.x }
                if series.joined, points.count > 1 {
                    s += "<polyline fill=\"none\" stroke=\"\(colour)\" stroke-width=\"2\" points=\"" + points.map { "\(px($0.x)),\(py($0.y))" }.joined(separator: " ") + "\"/>\n"
                }
                for p in points {
                    let (x, y) = (px(p.x), py(p.y))
                    let tip = "<title>\(escape(series.label)): \(number(p.x)), \(number(p.y))</title>"
                    if series.joined {
                        s += "<circle cx=\"\(x)\" cy=\"\(y)\" r=\"3.5\" fill=\"\(colour)\">\(tip)</circle>\n"
                    } else {
                        s += "<path d=\"M\(x) \(y - 5)L\(x + 5) \(y)L\(x) \(y + 5)L\(x - 5) \(y)Z\" fill=\"white\" stroke=\"\(colour)\" stroke-width=\"2\">\(tip)</path>\n"
                    }
                }
                if series.joined {
                    s += "<line x1=\"\(legendX)\" y1=\"\(legendY)\" x2=\"\(legendX + 28)\" y2=\"\(legendY)\" stroke=\"\(colour)\" stroke-width=\"2\"/>"
                    s += "<circle cx=\"\(legendX + 14)\" cy=\"\(legendY)\" r=\"3.5\" fill=\"\(colour)\"/>"
                } else {
                    let (x, y) = (legendX + 14, legendY)
                    s += "<path d=\"M\(x) \(y - 5)L\(x + 5) \(y)L\(x) \(y + 5)L\(x - 5) \(y)Z\" fill=\"white\" stroke=\"\(colour)\" stroke-width=\"2\"/>"
                }
                s += "<text x=\"\(legendX + 36)\" y=\"\(legendY + 4)\">\(escape(series.label))</text>\n"
                legendY += 18
            }
            return s + "</svg>\n"
        }
    }
}
