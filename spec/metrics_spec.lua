-- mtasts.metrics: families with fixed label sets and their Prometheus text exposition.
local metrics = require("mtasts.metrics")
local util = require("support.util")

describe("mtasts.metrics", function()
  it("exposes counters, gauges and histograms in the text format", function()
    local reg = metrics.registry()
    local lookups = reg:counter("mtasts_lookups_total", "Lookups answered.",
      { "answer", "source" }, { series = { { "secure", "cache" }, { "none", "fetched" } } })
    local rows = reg:gauge("mtasts_cache_rows", "Cache rows by mode.", { "mode" }, {
      collect = function(f) f:labels("enforce"):set(3) f:labels("testing"):set(1) end })
    local lat = reg:histogram("mtasts_dns_seconds", "DNS latency.", nil,
      { buckets = { 0.01, 0.1, 1 } })
    local hit = lookups:labels("secure", "cache")
    hit:inc()
    hit:inc(2)
    assert.equal(hit, lookups:labels("secure", "cache"), "a series is made once")
    lat:observe(0.005)
    lat:observe(0.5)
    lat:observe(7)
    assert.equal(rows, reg:get("mtasts_cache_rows"))
    local text = reg:expose()
    assert.equal(table.concat({
      "# HELP mtasts_lookups_total Lookups answered.",
      "# TYPE mtasts_lookups_total counter",
      'mtasts_lookups_total{answer="secure",source="cache"} 3',
      'mtasts_lookups_total{answer="none",source="fetched"} 0',
      "# HELP mtasts_cache_rows Cache rows by mode.",
      "# TYPE mtasts_cache_rows gauge",
      'mtasts_cache_rows{mode="enforce"} 3',
      'mtasts_cache_rows{mode="testing"} 1',
      "# HELP mtasts_dns_seconds DNS latency.",
      "# TYPE mtasts_dns_seconds histogram",
      'mtasts_dns_seconds_bucket{le="0.01"} 1',
      'mtasts_dns_seconds_bucket{le="0.1"} 1',
      'mtasts_dns_seconds_bucket{le="1"} 2',
      'mtasts_dns_seconds_bucket{le="+Inf"} 3',
      "mtasts_dns_seconds_sum 7.505",
      "mtasts_dns_seconds_count 3",
      "" }, "\n"), text)
    local v = reg:values()
    assert.equal(3, v.mtasts_lookups_total["secure,cache"])
    assert.same({ count = 3, sum = 7.505 }, v.mtasts_dns_seconds)
  end)

  it("escapes label values and help text", function()
    local reg = metrics.registry()
    reg:counter("x_total", "a \\ b\nc", { "l" }):labels('q"\\\n'):inc()
    local text = reg:expose()
    assert.matches("# HELP x_total a \\\\ b\\nc\n", text, 1, true)
    assert.matches('x_total{l="q\\"\\\\\\n"} 1', text, 1, true)
  end)

  it("refuses misuse", function()
    local reg = metrics.registry()
    local c = reg:counter("c_total", "c", { "a" })
    assert.has_error(function() reg:counter("c", "no _total") end)
    assert.has_error(function() reg:counter("c_total", "twice") end)
    assert.has_error(function() reg:gauge("g", "g", { "le" }) end)
    assert.has_error(function() c:labels() end, "c_total takes 1 label value(s), got 0")
    assert.has_error(function() c:labels("x"):inc(-1) end, "a counter only goes up")
    assert.has_error(function() c:labels("x"):set(1) end, "a counter cannot be set")
  end)

  it("passes promtool check metrics", function()
    local reg = metrics.registry()
    reg:counter("mtasts_lookups_total", "Lookups answered, by answer and source.",
      { "answer", "source" }):labels("secure", "cache"):inc(5)
    reg:gauge("mtasts_cache_rows", "Cache rows by mode.", { "mode" }):labels("enforce"):set(2)
    reg:histogram("mtasts_fetch_seconds", "Policy fetch latency."):observe(0.3)
    reg:gauge("mtasts_build_info", "Versions.", { "version" }):labels('1.0 "x"\\'):set(1)
    local dir, cleanup = util.tmpdir()
    finally(cleanup)
    util.write(dir .. "/m.txt", reg:expose())
    local out, status = util.run("promtool check metrics < " .. dir .. "/m.txt 2>&1")
    assert.equal(0, status, out)
    assert.equal("", out)
  end)
end)
