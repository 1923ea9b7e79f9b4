\set a random(1, :accounts)
SELECT payledger.transfer((SELECT id FROM bench_acc WHERE n = :a), (SELECT id FROM bench_acc WHERE n = 0), 1);
