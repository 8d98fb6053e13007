-- Auto-routing of CT series to vacseg nodes, and of their results to the TPS.
--
-- A CT series that has been stable for "StableAge" seconds goes to exactly one
-- node. The RTSTRUCT and SEG series the nodes send back go to the treatment
-- planning system, or stay in Orthanc when RESULTS_TO is nil.
--
-- The names below are the symbolic names of "DicomModalities" in orthanc.json.

local NODES = { "vacseg" }  -- the nodes; list several to spread series across them
local RESULTS_TO = "tps"    -- where RTSTRUCT and SEG series go (nil: they stay here)

local TO_NODES = { CT = true }
local RESULTS = { RTSTRUCT = true, SEG = true }

-- A hash of the SeriesInstanceUID, the same on every machine and every run: a
-- series, and any re-send of it, always goes to the same node.
local function SeriesHash(uid)
  local hash = 0
  for i = 1, #uid do
    hash = (hash * 31 + string.byte(uid, i)) % 2147483647
  end
  return hash
end

local function NodeFor(seriesInstanceUid)
  return NODES[SeriesHash(seriesInstanceUid) % #NODES + 1]
end

-- C-STORE the series as an Orthanc job: failed jobs are listed under /jobs and
-- can be resubmitted (POST /jobs/<id>/resubmit).
local function SendSeries(seriesId, modality)
  local request = { Resources = { seriesId }, Asynchronous = true }
  local answer = ParseJson(RestApiPost('/modalities/' .. modality .. '/store', DumpJson(request, true)))
  print('vacseg routing: series ' .. seriesId .. ' to ' .. modality .. ', job ' .. answer['ID'])
end

function OnStableSeries(seriesId, tags, metadata)
  local modality = tags['Modality']
  if TO_NODES[modality] then
    SendSeries(seriesId, NodeFor(tags['SeriesInstanceUID']))
  elseif RESULTS[modality] and RESULTS_TO ~= nil then
    SendSeries(seriesId, RESULTS_TO)
  end
end
