-- wrk script for the next-best-offer API: random customers from IDS_FILE, one a line: the external id,
-- optionally followed by a space and the external id of an anchor order.
--   IDS_FILE=ids.txt API_TOKEN=… wrk -t1 -c4 -d30s --latency -s bench/recommender_api.lua http://127.0.0.1:8765
-- bench/recommender_api.py writes the file, starts the server and runs this.
local paths = {}
for line in io.lines(os.getenv("IDS_FILE")) do
  local id, anchor = line:match("^(%S+)%s*(%S*)$")
  if id then
    local path = "/api/v1/customers/" .. id .. "/recommendations?k=3"
    if anchor ~= "" then path = path .. "&anchor_order=" .. anchor end
    paths[#paths + 1] = path
  end
end
local auth = "Bearer " .. os.getenv("API_TOKEN")
math.randomseed(7)
request = function()
  return wrk.format("GET", paths[math.random(#paths)], {["Authorization"] = auth})
end

done = function(summary, latency, requests)
  io.write(string.format("p95 %.1f ms, p99 %.1f ms, %d requests, %d errors (status >= 400: %d)\n",
    latency:percentile(95) / 1000, latency:percentile(99) / 1000, summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
