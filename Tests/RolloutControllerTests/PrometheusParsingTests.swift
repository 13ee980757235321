import Foundation
import NIOHTTP1
@testable import RolloutController
import Testing

/// Prometheus's answers as its HTTP API documents them, parsed without a server: what counts as
/// a value, as no data, and as a failure (and which failures are retried).
@Suite("Prometheus answers")
struct PrometheusParsingTests {
    let client: PrometheusClient = {
        guard case .success(let base) = HTTPEndpoint.parse("http://127.0.0.1:9090") else { fatalError("valid URL") }
        return PrometheusClient(base: base, timeout: .seconds(1))
    }()

    func parse(_ body: String, status: HTTPResponseStatus = .ok) throws(PrometheusError) -> Double? {
        try client.parse(body: Data(body.utf8), status: status, query: "q")
    }

    @Test func vectorWithOneSample() throws {
        #expect(try parse(#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1795368038.832,"0.0125"]}]}}"#) == 0.0125)
    }

    @Test func scalar() throws {
        #expect(try parse(#"{"status":"success","data":{"resultType":"scalar","result":[1795368038.832,"30"]}}"#) == 30)
    }

    @Test(arguments: ["NaN", "+Inf", "-Inf"])
    func specialValuesAreNoData(value: String) throws {
        #expect(try parse(#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"\#(value)"]}]}}"#) == nil)
    }

    @Test func emptyResultIsNoData() throws {
        #expect(try parse(#"{"status":"success","data":{"resultType":"vector","result":[]}}"#) == nil)
    }

    @Test func severalSeriesAreRefused() {
        #expect {
            try parse(#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]}}"#)
        } throws: { error in
            (error as? PrometheusError)?.code == .ambiguous && "\(error)".contains("sum(")
        }
    }

    @Test func badQueryIsNotRetried() {
        #expect {
            try parse(#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#, status: .badRequest)
        } throws: { error in
            guard let error = error as? PrometheusError else { return false }
            return error.code == .badQuery && !error.isTransient && error.message.contains("parse error at char 5")
        }
    }

    @Test(arguments: [(HTTPResponseStatus.badGateway, true), (.serviceUnavailable, true), (.gatewayTimeout, true), (.tooManyRequests, true), (.internalServerError, false)])
    func nonJSONErrorsAndWhichAreRetried(status: HTTPResponseStatus, transient: Bool) {
        #expect {
            try parse("<html>proxy error</html>", status: status)
        } throws: { error in
            guard let error = error as? PrometheusError else { return false }
            return error.isTransient == transient
        }
    }

    @Test func unparsableBodyOn200IsAnError() {
        #expect(throws: PrometheusError.self) { try parse("not json") }
        #expect(throws: PrometheusError.self) {
            try parse(#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"fifty"]}]}}"#)
        }
    }

    /// The answers the quick reader takes, byte for byte as Prometheus writes them, and answers
    /// it must leave to the JSON parser (labels, warnings, escapes, other shapes).
    static let quickShapes = [
        #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1795368038.832,"0.0125"]}]}}"#,
        #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#,
        #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"-Inf"]}]}}"#,
        #"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
        #"{"status":"success","data":{"resultType":"scalar","result":[1795368038.832,"30"]}}"# + "\n",
    ]
    static let documentShapes = [
        #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"api"},"value":[1,"2"]}]}}"#,
        #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]}]},"warnings":["w"]}"#,
        #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"\u0032"]}]}}"#,
        #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]},{"metric":{},"value":[1,"3"]}]}}"#,
        #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"fifty"]}]}}"#,
        #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,""]}]}}"#,
        #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]}]}} trailing"#,
        #"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
        #"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
        "",
    ]

    @Test(arguments: quickShapes)
    func theQuickReaderAgreesWithTheJSONParser(body: String) throws {
        let quick = try #require(Data(body.utf8).withUnsafeBytes(quickSample))
        #expect(quick == (try client.parseDocument(body: Data(body.utf8), status: .ok, query: "q")))
    }

    @Test(arguments: documentShapes)
    func otherShapesAreLeftToTheJSONParser(body: String) {
        #expect(Data(body.utf8).withUnsafeBytes(quickSample) == nil)
    }

    @Test func labelledSampleIsReadByTheJSONParser() throws {
        #expect(try parse(Self.documentShapes[0]) == 2)
        #expect(try parse(Self.documentShapes[2]) == 2)
    }

    func samples(_ body: String, status: HTTPResponseStatus = .ok) throws(PrometheusError) -> [PrometheusSample] {
        try client.parseSamples(body: Data(body.utf8), status: status, query: "q")
    }

    @Test func aVectorsSamplesKeepTheirLabels() throws {
        let body = #"""
            {"status":"success","data":{"resultType":"vector","result":[
              {"metric":{"le":"0.05"},"value":[1795368038.832,"120.5"]},
              {"metric":{"le":"+Inf"},"value":[1795368038.832,"130"]},
              {"metric":{"le":"0.1","job":"api"},"value":[1795368038.832,"125"]}]}}
            """#
        #expect(
            try samples(body) == [
                PrometheusSample(labels: ["le": "0.05"], value: 120.5), PrometheusSample(labels: ["le": "+Inf"], value: 130),
                PrometheusSample(labels: ["le": "0.1", "job": "api"], value: 125),
            ])
        // As a histogram's buckets: by upper bound, +Inf infinite.
        #expect(HistogramAnswers.buckets(try samples(body)) == [0.05: 120.5, 0.1: 125, .infinity: 130])
    }

    @Test func anEmptyVectorHasNoSamplesAndSpecialValuesAreLeftOut() throws {
        #expect(try samples(#"{"status":"success","data":{"resultType":"vector","result":[]}}"#).isEmpty)
        let special = #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"le":"1"},"value":[1,"NaN"]},{"metric":{"le":"2"},"value":[1,"3"]}]}}"#
        #expect(try samples(special) == [PrometheusSample(labels: ["le": "2"], value: 3)])
        // The quick reader's unlabelled shape is a vector too.
        #expect(try samples(Self.quickShapes[0]) == [PrometheusSample(labels: [:], value: 0.0125)])
    }

    @Test func aVectorQueryRefusesOtherShapesAndFailsAsAValueQueryDoes() {
        #expect {
            try samples(#"{"status":"success","data":{"resultType":"scalar","result":[1,"30"]}}"#)
        } throws: { error in
            (error as? PrometheusError)?.code == .ambiguous && "\(error)".contains("not a vector")
        }
        #expect {
            try samples(#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"le":1},"value":[1,"3"]}]}}"#)
        } throws: { error in
            (error as? PrometheusError)?.code == .unparsable
        }
        #expect {
            try samples(#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"fifty"]}]}}"#)
        } throws: { error in
            (error as? PrometheusError)?.code == .unparsable
        }
        #expect {
            try samples(#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#, status: .badRequest)
        } throws: { error in
            (error as? PrometheusError)?.code == .badQuery
        }
        #expect {
            try samples("<html>proxy error</html>", status: .badGateway)
        } throws: { error in
            (error as? PrometheusError)?.isTransient == true
        }
    }

    func series(_ body: String, status: HTTPResponseStatus = .ok) throws(PrometheusError) -> [PrometheusSeries] {
        try client.parseSeries(body: Data(body.utf8), status: status, query: "q")
    }

    @Test func aRangeAnswersSeriesKeepTheirLabelsAndPointsInTimeOrder() throws {
        let body = #"""
            {"status":"success","data":{"resultType":"matrix","result":[
              {"metric":{"feature":"checkout"},"values":[[1733350000,"0.012"],[1733352016.5,"NaN"],[1733354032,"+Inf"],[1733356048,"0.5"]]}]}}
            """#
        #expect(
            try series(body) == [
                PrometheusSeries(
                    labels: ["feature": "checkout"],
                    points: [PrometheusSeries.Point(time: 1_733_350_000, value: 0.012), PrometheusSeries.Point(time: 1_733_356_048, value: 0.5)])
            ])
        #expect(try series(#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#).isEmpty)
        let two = #"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"1"},"values":[[1,"1"]]},{"metric":{"a":"2"},"values":[]}]}}"#
        #expect(try series(two).map(\.labels) == [["a": "1"], ["a": "2"]])
    }

    @Test func aRangeAnswerThatIsNotAMatrixOfPointsFails() {
        let refused: [(String, HTTPResponseStatus, PrometheusError.Code)] = [
            (#"{"status":"success","data":{"resultType":"vector","result":[]}}"#, .ok, .ambiguous),
            (#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1","2"]]}]}}"#, .ok, .unparsable),
            (#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[["1","1"]]}]}}"#, .ok, .unparsable),
            (#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"fifty"]]}]}}"#, .ok, .unparsable),
            (#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[2,"1"],[1,"1"]]}]}}"#, .ok, .unparsable),
            (#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"value":[1,"1"]}]}}"#, .ok, .unparsable),
            (#"{"status":"error","errorType":"bad_data","error":"exceeded maximum resolution of 11,000 points per timeseries"}"#, .badRequest, .badQuery),
            ("<html>proxy error</html>", .serviceUnavailable, .httpStatus),
            ("not json", .ok, .unparsable),
        ]
        for (body, status, code) in refused {
            #expect(throws: PrometheusError.self, "\(body)") { try series(body, status: status) }
            do {
                _ = try series(body, status: status)
            } catch {
                #expect(error.code == code, "\(body): \(error)")
            }
        }
        // More points than a history can use: refused, whatever the series.
        let many = (0...PrometheusClient.maxRangePoints).map { "[\($0),\"1\"]" }.joined(separator: ",")
        #expect {
            try series(#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":["# + many + "]}]}}")
        } throws: { error in
            (error as? PrometheusError)?.code == .unparsable && "\(error)".contains("points")
        }
    }

    @Test func queriesAreFormEncoded() {
        #expect(formEncoded("sum(rate(x{a=\"b\"}[5m])) / 2") == "sum%28rate%28x%7Ba%3D%22b%22%7D%5B5m%5D%29%29%20%2F%202")
    }
}
