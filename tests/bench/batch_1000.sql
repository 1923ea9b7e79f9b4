\set k random(1, 20)
SELECT count(*) FROM payledger.transfer_batch((SELECT items FROM bench_batches WHERE k = :k));
